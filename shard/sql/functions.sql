-- Shardflow shard functions: the shard's SQL API. Applied (CREATE OR REPLACE)
-- after the migrations on every `migrate`, so they always match the code.
-- Errors raised here carry SQLSTATEs of class SF that shard/errors.py maps to
-- the ShardflowError hierarchy.

-- slot = first 4 bytes of md5(utf-8 routing key), big-endian unsigned, mod slots.
CREATE OR REPLACE FUNCTION shardflow.slot_of(p_key text, p_slots integer)
RETURNS integer LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ((('x' || substr(md5(p_key), 1, 8))::bit(32)::bigint) % p_slots)::integer
$$;

CREATE OR REPLACE FUNCTION shardflow.slot_count()
RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT value::integer FROM shardflow.settings WHERE key = 'slots'), 1024)
$$;

-- Why a start cannot be made, or NULL: the problems start_workflows and start_one report.
CREATE OR REPLACE FUNCTION shardflow.start_problem(p_id text, p_key text, p_version text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_version IS NULL THEN 'unknown_workflow'
        WHEN p_id IS NULL OR length(p_id) NOT BETWEEN 1 AND 200
             OR p_id ~ '[[:cntrl:]]' THEN 'invalid_id'
        WHEN length(p_key) NOT BETWEEN 1 AND 200 THEN 'invalid_routing_key'
    END
$$;

-- The kinds of due workflows that hold hand-offs back: an executor running any of them
-- takes none (a backlog is claimed in order). A limited name waiting for room, or a kind
-- nobody runs, is left to its claim and holds nothing back. Up to 50 due entries, never a
-- scan of a long queue, each name read by its key (plpgsql: its plan is kept per session).
-- Starts call it only when the queue has a due entry (the common case at any load whose
-- starts are handed off has none): the call itself was about a tenth of a start batch's
-- CPU. "Has a due entry" is min(run_at) <= now(), which Postgres reads off the run_at
-- index whatever it knows of the table; an EXISTS over run_at <= now() was planned as a
-- sequential scan while the queue had no statistics (it is analyzed rarely), reading
-- every future timer. For the same reason the entries below are taken in run_at order.
CREATE OR REPLACE FUNCTION shardflow.handoff_held_kinds()
RETURNS text[] LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN ARRAY(
        SELECT DISTINCT d.kind FROM (
            SELECT (SELECT w.name || '@' || w.version FROM shardflow.workflows w
                    WHERE w.id = q.workflow_id
                      AND NOT EXISTS (SELECT FROM shardflow.limits l WHERE l.name = w.name)
                   ) AS kind
            FROM shardflow.ready q WHERE q.run_at <= now() ORDER BY q.run_at LIMIT 50) d
        WHERE d.kind IS NOT NULL);
END
$$;

-- One item of a hand-off NOTIFY: what a claim would return, as a JSON object with the
-- column names of claim_workflows (decoded by ClaimedWorkflow.decode, shard/model.py).
CREATE OR REPLACE FUNCTION shardflow.handoff_item(
    p_id text, p_name text, p_version text, p_input jsonb, p_timeout double precision,
    p_key text, p_parent text, p_priority integer)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT json_build_object('id', p_id, 'name', p_name, 'version', p_version,
                             'input', p_input::text, 'lease_epoch', 1,
                             'deadline', now() + make_interval(secs => p_timeout),
                             'created_at', now(), 'routing_key', p_key, 'parent', p_parent,
                             'priority', coalesce(p_priority, 0))::text
$$;

-- Start many workflows in one statement (the hot path of every start).
-- Idempotent by ID: an existing ID with the same name and input comes back with
-- created = false; with another input, conflict = true. A batch with any problem
-- (unknown_workflow, invalid_id, invalid_routing_key, slot_moved) writes nothing
-- and reports the problem per row; callers turn it into an error (SF001/SF002/SF006).
-- status is NULL for an ID inserted concurrently by another transaction: re-read it.
CREATE OR REPLACE FUNCTION shardflow.start_workflows(
    p_ids text[], p_names text[], p_inputs jsonb[], p_routing_keys text[],
    p_parents text[], p_timeouts double precision[], p_priorities integer[] DEFAULT NULL,
    p_partial boolean DEFAULT false)
RETURNS TABLE (id text, slot integer, status text, created boolean, conflict boolean,
               problem text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    -- Read once here: a call of the SQL function slot_count() in the query below was
    -- planned again on every start (about 0.2 ms, more than the rest of a small batch).
    v_slots integer := (SELECT s.value::integer FROM shardflow.settings s WHERE s.key = 'slots');
BEGIN
    IF cardinality(p_ids) = 1 THEN
        -- One start (every start at low load, and most children): the same writes and
        -- answers, statement by statement. Postgres builds every node of the batch
        -- query's plan at each run; for one row that was most of its cost.
        RETURN QUERY SELECT * FROM shardflow.start_one(
            p_ids[1], p_names[1], p_inputs[1], p_routing_keys[1], p_parents[1],
            p_timeouts[1], p_priorities[1], coalesce(v_slots, 1024));
        RETURN;
    END IF;
    RETURN QUERY
    WITH input AS (
        SELECT t.*, coalesce(t.routing_key, t.id) AS key
        FROM unnest(p_ids, p_names, p_inputs, p_routing_keys, p_parents, p_timeouts,
                    p_priorities)
            WITH ORDINALITY AS t(id, name, input, routing_key, parent, timeout_s, priority, ord)
    ), keyed AS (
        SELECT i.*, shardflow.slot_of(i.key, coalesce(v_slots, 1024)) AS slot,
               r.version, coalesce(i.timeout_s, r.timeout_s) AS timeout,
               shardflow.start_problem(i.id, i.key, r.version) AS problem
        FROM input i
        LEFT JOIN LATERAL (
            SELECT g.version, g.timeout_s FROM shardflow.registry g WHERE g.name = i.name
            ORDER BY g.registered_at DESC, g.version DESC LIMIT 1) r ON true
    ), owned AS (
        -- FOR SHARE: a slot move's fence (an UPDATE of this row) waits for this start to
        -- commit, and a start after the fence sees the slot 'moving': a start can never
        -- slip in after the slot's rows were exported.
        SELECT s.slot FROM shardflow.slots s
        WHERE s.slot = ANY (ARRAY(SELECT k.slot FROM keyed k)) AND s.state = 'owned'
        FOR SHARE
    ), checked AS (
        SELECT k.*, coalesce(k.problem, CASE WHEN EXISTS (SELECT 1 FROM shardflow.slots)
            AND k.slot NOT IN (SELECT o.slot FROM owned o)
            THEN 'slot_moved' END) AS issue
        FROM keyed k
    ), takers AS MATERIALIZED (
        -- Executors taking hand-offs now, but none holding kinds that are due in the
        -- queue, and none for a name with concurrency limits (claims count them, below).
        -- Computed once per statement: inlined, this ran again for every start of a batch,
        -- and a plan made while the tables were small hash-joined the whole of workflows
        -- whenever the queue held a due entry.
        SELECT e.owner, e.lock_key, e.kinds, e.lease_until,
               greatest(coalesce(e.handoff_room, 1), 1) AS room
        FROM shardflow.executors e
        WHERE e.handoff_until > now()
          AND NOT (e.kinds && CASE WHEN (SELECT min(q.run_at) FROM shardflow.ready q) <= now()
                                   THEN (SELECT shardflow.handoff_held_kinds())
                                   ELSE '{}' END)
    ), placed AS (
        SELECT c.*, t.owner, t.lock_key, t.lease_until
        FROM checked c
        LEFT JOIN LATERAL (
            SELECT t.owner, t.lock_key, t.lease_until FROM takers t
            WHERE (c.name || '@' || c.version) = ANY (t.kinds)
              AND octet_length(c.input::text) <= 2000
              AND NOT EXISTS (SELECT 1 FROM shardflow.limits l WHERE l.name = c.name)
            -- At random in proportion to each one's room (the first of exponential
            -- clocks running at those rates): the emptier executors get more.
            ORDER BY -ln(1.0 - random()) / t.room LIMIT 1) t ON c.issue IS NULL
    ), ins AS (
        INSERT INTO shardflow.workflows AS w
            (id, slot, routing_key, name, version, status, input, parent, deadline, priority,
             lease_owner, lease_epoch, lease_until)
        SELECT c.id, c.slot, c.key, c.name, c.version,
               CASE WHEN c.owner IS NULL THEN 'pending' ELSE 'running' END, c.input, c.parent,
               now() + make_interval(secs => c.timeout), coalesce(c.priority, 0),
               c.owner, CASE WHEN c.owner IS NULL THEN 0 ELSE 1 END, c.lease_until
        FROM placed c
        WHERE c.issue IS NULL
          AND (p_partial OR NOT EXISTS (SELECT 1 FROM checked b WHERE b.issue IS NOT NULL))
        ON CONFLICT ON CONSTRAINT workflows_pkey DO NOTHING
        RETURNING w.id, w.slot, w.priority, w.status, w.lease_owner
    ), rdy AS (
        INSERT INTO shardflow.ready (workflow_id, slot, priority)
        SELECT ins.id, ins.slot, ins.priority FROM ins WHERE ins.status = 'pending'
    ), ntf AS (
        SELECT pg_notify('shardflow_ready', '')
        WHERE EXISTS (SELECT 1 FROM ins WHERE ins.status = 'pending')
    ), handed AS (
        -- Each taker is told of its workflows on its own channel, with what a claim would
        -- return (the columns of ClaimedWorkflow), in payloads under 8,000 bytes.
        SELECT p.lock_key, p.item,
               sum(length(p.item)) OVER (PARTITION BY p.lock_key ORDER BY p.id) / 7000 AS part
        FROM (SELECT DISTINCT ON (c.id) c.lock_key, c.id,
                     shardflow.handoff_item(c.id, c.name, c.version, c.input, c.timeout,
                                            c.key, c.parent, c.priority) AS item
              FROM placed c JOIN ins ON ins.id = c.id AND ins.lease_owner = c.owner
              ORDER BY c.id, c.ord) p
    ), handoff AS (
        SELECT pg_notify('shardflow_handoff_' || h.lock_key, '[' || string_agg(h.item, ',') || ']')
        FROM handed h GROUP BY h.lock_key, h.part
    )
    SELECT c.id, c.slot, coalesce(ins.status, w.status),
           ins.id IS NOT NULL AND c.ord = min(c.ord) OVER (PARTITION BY c.id),
           coalesce(ins.id IS NULL AND (w.name <> c.name OR w.input <> c.input), false),
           c.issue
    FROM checked c
    LEFT JOIN ins ON ins.id = c.id
    -- A key probe per start that found its ID taken (LIMIT keeps the planner from making it
    -- a join: a plan made while the shard was empty read the whole table at every start).
    LEFT JOIN LATERAL (
        SELECT w.status, w.name, w.input FROM shardflow.workflows w
        WHERE w.id = c.id AND ins.id IS NULL LIMIT 1) w ON true
    CROSS JOIN (SELECT count(*) FROM ntf) AS n
    CROSS JOIN (SELECT count(*) FROM handoff) AS h
    ORDER BY c.ord;
END
$$;

-- One start of start_workflows (which calls it for a batch of one): the same checks,
-- hand-off, writes and NOTIFYs as its batch query, in that order.
CREATE OR REPLACE FUNCTION shardflow.start_one(
    p_id text, p_name text, p_input jsonb, p_routing_key text, p_parent text,
    p_timeout double precision, p_priority integer, p_slots integer)
RETURNS TABLE (id text, slot integer, status text, created boolean, conflict boolean,
               problem text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_key text := coalesce(p_routing_key, p_id);
    v_version text;
    v_timeout double precision;
    v_kind text;
    v_owner text;
    v_lock bigint;
    v_until timestamptz;
    v_status text;
    v_name text;
    v_input jsonb;
BEGIN
    id := p_id;
    slot := shardflow.slot_of(v_key, p_slots);
    created := false;
    SELECT g.version, g.timeout_s INTO v_version, v_timeout FROM shardflow.registry g
    WHERE g.name = p_name ORDER BY g.registered_at DESC, g.version DESC LIMIT 1;
    problem := shardflow.start_problem(p_id, v_key, v_version);
    IF problem IS NULL THEN
        -- FOR SHARE, as in the batch query: a slot move's fence waits for this start.
        PERFORM FROM shardflow.slots s WHERE s.slot = start_one.slot AND s.state = 'owned'
        FOR SHARE;
        IF NOT FOUND AND EXISTS (SELECT FROM shardflow.slots) THEN
            problem := 'slot_moved';
        END IF;
    END IF;
    IF problem IS NULL THEN
        v_kind := p_name || '@' || v_version;
        IF octet_length(p_input::text) <= 2000
           AND NOT EXISTS (SELECT FROM shardflow.limits l WHERE l.name = p_name) THEN
            SELECT e.owner, e.lock_key, e.lease_until INTO v_owner, v_lock, v_until
            FROM shardflow.executors e
            WHERE e.handoff_until > now() AND v_kind = ANY (e.kinds)
              AND NOT (e.kinds && CASE WHEN (SELECT min(q.run_at) FROM shardflow.ready q) <= now()
                  THEN (SELECT shardflow.handoff_held_kinds()) ELSE '{}' END)
            ORDER BY -ln(1.0 - random()) / greatest(coalesce(e.handoff_room, 1), 1)
            LIMIT 1;
        END IF;
        INSERT INTO shardflow.workflows AS w
            (id, slot, routing_key, name, version, status, input, parent, deadline, priority,
             lease_owner, lease_epoch, lease_until)
        VALUES (p_id, start_one.slot, v_key, p_name, v_version,
                CASE WHEN v_owner IS NULL THEN 'pending' ELSE 'running' END, p_input,
                p_parent, now() + make_interval(secs => coalesce(p_timeout, v_timeout)),
                coalesce(p_priority, 0), v_owner,
                CASE WHEN v_owner IS NULL THEN 0 ELSE 1 END, v_until)
        ON CONFLICT ON CONSTRAINT workflows_pkey DO NOTHING
        RETURNING w.status INTO v_status;
        created := FOUND;
        IF created AND v_owner IS NULL THEN
            INSERT INTO shardflow.ready (workflow_id, slot, priority)
            VALUES (p_id, start_one.slot, coalesce(p_priority, 0));
            PERFORM pg_notify('shardflow_ready', '');
        ELSIF created THEN
            PERFORM pg_notify('shardflow_handoff_' || v_lock, '[' || shardflow.handoff_item(
                p_id, p_name, v_version, p_input, coalesce(p_timeout, v_timeout), v_key,
                p_parent, p_priority) || ']');
        END IF;
    END IF;
    IF created THEN
        status := v_status;
        conflict := false;
    ELSE
        SELECT w.status, w.name, w.input INTO v_status, v_name, v_input
        FROM shardflow.workflows w WHERE w.id = p_id;
        status := v_status;
        conflict := coalesce(v_name <> p_name OR v_input <> p_input, false);
    END IF;
    RETURN NEXT;
END
$$;

-- The checkpoint flush of one plain record (ShardStore.checkpoint_flush picks it): the
-- writes, fence and outcome NOTIFY of checkpoint_flush_plain (shard/sql/queries.sql) for a
-- batch of one, statement by statement. Postgres builds every node of that query's plan at
-- each run; at low load most flushes carry one record and that was most of their cost.
-- A plain record is still running (steps only: the row is locked, not written) or
-- finishes its workflow.
CREATE OR REPLACE FUNCTION shardflow.flush_one(p_records json)
RETURNS TABLE (id text, cancel_requested boolean, notified bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    r record;
    v_status text;
    v_output jsonb;
    v_error jsonb;
    v_payload text;
BEGIN
    SELECT t.* INTO r
    FROM json_to_recordset(p_records) AS t(id text, epoch bigint, status text, output text,
        error text, run_at timestamptz, next_seq integer, seen_signal integer, parent text,
        steps json);
    IF r.status = 'running' THEN
        -- Steps only (see checkpoint_flush_plain): lock the row under the same fence.
        SELECT w.status, w.cancel_requested INTO v_status, cancel_requested
        FROM shardflow.workflows w
        WHERE w.id = r.id AND w.lease_epoch = r.epoch AND w.status = 'running'
        FOR NO KEY UPDATE;
    ELSE
        UPDATE shardflow.workflows w SET
            status = r.status,
            output = r.output::jsonb,
            error = r.error::jsonb,
            next_seq = greatest(w.next_seq, r.next_seq),
            wake_at = r.run_at,
            lease_owner = NULL,
            lease_until = NULL,
            -- clock_timestamp(), not now(): see _flush_update in queries.sql.
            finished_at = CASE WHEN r.status IN ('completed', 'failed', 'cancelled')
                               THEN clock_timestamp() END,
            updated_at = now()
        WHERE w.id = r.id AND w.lease_epoch = r.epoch AND (w.status = 'running') IS TRUE
        RETURNING w.status, w.cancel_requested, w.output, w.error
        INTO v_status, cancel_requested, v_output, v_error;
    END IF;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO shardflow.steps (workflow_id, seq, name, status, output, error, attempts, started_at)
    SELECT r.id, s.seq, s.name, s.status, s.output::jsonb, s.error::jsonb, s.attempts,
           s.started_at
    FROM json_to_recordset(r.steps) AS s(seq integer, name text, status text,
        output text, error text, attempts integer, started_at timestamptz)
    ON CONFLICT (workflow_id, seq) DO NOTHING;
    notified := 0;
    IF v_status IN ('completed', 'failed', 'cancelled') THEN
        v_payload := json_build_array(json_build_array(r.id, v_status, v_output::text,
                                                        v_error::text))::text;
        PERFORM pg_notify('shardflow_done',
                          CASE WHEN length(v_payload) < 7900 THEN v_payload ELSE '' END);
        notified := 1;
    END IF;
    id := r.id;
    RETURN NEXT;
END
$$;

-- Where a workflow's code resumes (the seq of its next call): the row's next_seq is
-- written with its state (a suspension, a finish, a transactional step), but a flush of
-- plain steps in between only locks the row (checkpoint_flush_plain), so the step rows
-- count too. One backward probe of the steps' key; cancels and retries read it, and
-- claim_workflows has the same subquery written out (it runs per claimed row).
CREATE OR REPLACE FUNCTION shardflow.resume_seq(p_id text, p_next_seq integer)
RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT greatest(p_next_seq, (SELECT max(s.seq) + 1 FROM shardflow.steps s
                                 WHERE s.workflow_id = p_id))
$$;

-- Raise the error for the first problem a start_workflows row reports.
CREATE OR REPLACE FUNCTION shardflow.raise_start_problem(
    p_id text, p_name text, p_problem text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_problem = 'unknown_workflow' THEN
        RAISE EXCEPTION USING ERRCODE = 'SF001', MESSAGE = format(
            'unknown workflow %s: no executor of this shard has registered it',
            quote_literal(p_name));
    ELSIF p_problem IN ('invalid_id', 'invalid_routing_key') THEN
        RAISE EXCEPTION USING ERRCODE = 'SF002', MESSAGE = format(
            '%s of %s: it must be 1 to 200 characters without control characters',
            replace(p_problem, '_', ' '), coalesce(quote_literal(left(p_id, 40)), 'NULL'));
    ELSIF p_problem = 'slot_moved' THEN
        RAISE EXCEPTION USING ERRCODE = 'SF006', MESSAGE = format(
            'the slot of workflow %s is not owned by this shard (moved or moving); '
            'refresh the slot map and retry', quote_literal(p_id));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION shardflow.start_workflow(
    p_name text, p_input jsonb, p_id text DEFAULT NULL, p_routing_key text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_id text := coalesce(p_id, replace(gen_random_uuid()::text, '-', ''));
    r record;
BEGIN
    SELECT * INTO r FROM shardflow.start_workflows(
        ARRAY[v_id], ARRAY[p_name], ARRAY[p_input], ARRAY[p_routing_key],
        ARRAY[NULL::text], ARRAY[NULL::double precision]);
    PERFORM shardflow.raise_start_problem(v_id, p_name, r.problem);
    IF r.conflict THEN
        RAISE EXCEPTION USING ERRCODE = 'SF003', MESSAGE = format(
            'workflow %s already exists with another name or input', quote_literal(v_id));
    END IF;
    RETURN v_id;
END
$$;

-- The status document of one workflow (NULL when unknown), steps included.
CREATE OR REPLACE FUNCTION shardflow.workflow_status(p_id text)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', w.id, 'workflow', w.name, 'version', w.version, 'status', w.status,
        'priority', w.priority,
        'input', w.input, 'output', w.output, 'error', w.error - 'compensations',
        'attempt', w.attempt,
        'slot', w.slot, 'routing_key', w.routing_key, 'parent', w.parent,
        'created_at', w.created_at,
        -- The row's last change, or its last checkpoint's: a flush of plain steps leaves
        -- the row's updated_at as it was (see resume_seq).
        'updated_at', greatest(w.updated_at, (SELECT max(s.finished_at) FROM shardflow.steps s
                                              WHERE s.workflow_id = w.id)),
        'finished_at', w.finished_at, 'wake_at', w.wake_at,
        'steps', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                'seq', s.seq, 'name', s.name, 'status', s.status, 'output', s.output,
                'error', s.error, 'attempts', s.attempts, 'started_at', s.started_at,
                'finished_at', s.finished_at) ORDER BY s.seq)
            FROM shardflow.steps s WHERE s.workflow_id = w.id), '[]'::jsonb),
        -- Saga: the compensations that ran, in order; written with the final status.
        'compensations', coalesce(w.error -> 'compensations', '[]'::jsonb))
    FROM shardflow.workflows w WHERE w.id = p_id
$$;

-- Request cancellation. A workflow that never ran is cancelled at once; a running
-- one stops at its next checkpoint; a sleeping or waiting one is woken to stop; its
-- unfinished children on this shard are cancelled too.
-- Lock the slot's row (FOR SHARE) so that a move's fence waits for this transaction,
-- or refuse when the slot is moving or gone.
CREATE OR REPLACE FUNCTION shardflow.check_slot_served(p_slot integer, p_id text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM shardflow.slots WHERE slot = p_slot AND state = 'owned' FOR SHARE;
    IF NOT FOUND AND EXISTS (SELECT 1 FROM shardflow.slots) THEN
        RAISE EXCEPTION USING ERRCODE = 'SF006', MESSAGE = format(
            'the slot of workflow %s is moving or moved; refresh the slot map and retry',
            quote_literal(p_id));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION shardflow.cancel_workflow(p_id text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    -- The ready entry first, then the workflow: the claim's order (it locks ready rows,
    -- then updates their workflows), so a claim under way and this never deadlock.
    PERFORM 1 FROM shardflow.ready WHERE workflow_id = p_id FOR UPDATE;
    PERFORM shardflow.check_slot_served(w.slot, p_id)
    FROM shardflow.workflows w WHERE w.id = p_id;
    UPDATE shardflow.workflows w
    SET cancel_requested = true, signal_seq = w.signal_seq + 1, updated_at = now(),
        status = CASE WHEN w.status = 'pending' AND shardflow.resume_seq(w.id, w.next_seq) = 0
                      THEN 'cancelled' ELSE w.status END,
        finished_at = CASE WHEN w.status = 'pending' AND shardflow.resume_seq(w.id, w.next_seq) = 0
                           THEN clock_timestamp() END
    WHERE w.id = p_id AND w.status NOT IN ('completed', 'failed', 'cancelled')
    RETURNING w.id, w.slot, w.status, w.priority INTO r;
    IF NOT FOUND THEN
        SELECT w.status INTO r FROM shardflow.workflows w WHERE w.id = p_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'SF004', MESSAGE = format('unknown workflow ID %s', quote_literal(p_id));
        END IF;
        RETURN r.status;
    END IF;
    -- Its children on this shard (they inherit its routing key) are cancelled with it.
    PERFORM shardflow.cancel_workflow(c.id) FROM shardflow.workflows c
    WHERE c.parent = p_id AND c.status NOT IN ('completed', 'failed', 'cancelled');
    IF r.status = 'cancelled' THEN
        DELETE FROM shardflow.ready WHERE workflow_id = p_id;
        PERFORM pg_notify('shardflow_done', '');
    ELSIF r.status IN ('sleeping', 'waiting', 'pending') THEN
        INSERT INTO shardflow.ready (workflow_id, slot, priority) VALUES (r.id, r.slot, r.priority)
        ON CONFLICT (workflow_id) DO UPDATE SET run_at = now();
        PERFORM pg_notify('shardflow_ready', '');
    END IF;
    RETURN r.status;
END
$$;

-- Retry a failed workflow from its failed step: the failed step's row (and any after
-- it) is removed and the workflow is queued again; its completed steps are not re-run
-- (their recorded results replay). Refused (SF003) unless the workflow failed, or when
-- its compensations ran (start a new workflow then). Unknown workflow: SF004.
CREATE OR REPLACE FUNCTION shardflow.retry_workflow(p_id text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r record;
    cut integer;
BEGIN
    -- The ready entry first, then the workflow: the claim's order (it locks ready rows,
    -- then updates their workflows), so a claim under way and this never deadlock.
    PERFORM 1 FROM shardflow.ready WHERE workflow_id = p_id FOR UPDATE;
    SELECT w.id, w.slot, w.status, w.error, shardflow.resume_seq(w.id, w.next_seq) AS next_seq,
           w.priority INTO r
    FROM shardflow.workflows w WHERE w.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'SF004', MESSAGE = format('unknown workflow ID %s', quote_literal(p_id));
    END IF;
    PERFORM shardflow.check_slot_served(r.slot, p_id);
    IF r.status <> 'failed' THEN
        RAISE EXCEPTION USING ERRCODE = 'SF003', MESSAGE = format(
            'workflow %s is %s: only a failed workflow can be retried', quote_literal(p_id), r.status);
    END IF;
    IF jsonb_array_length(coalesce(r.error -> 'compensations', '[]'::jsonb)) > 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'SF003', MESSAGE = format(
            'workflow %s ran its compensations: start a new workflow instead', quote_literal(p_id));
    END IF;
    SELECT min(s.seq) INTO cut FROM shardflow.steps s
    WHERE s.workflow_id = p_id AND (s.status = 'failed' OR s.name = 'saga.compensate');
    DELETE FROM shardflow.steps s WHERE s.workflow_id = p_id AND s.seq >= coalesce(cut, r.next_seq);
    UPDATE shardflow.workflows w
    SET status = 'pending', output = NULL, error = NULL, finished_at = NULL, attempt = 0,
        next_seq = coalesce(cut, r.next_seq), lease_owner = NULL, lease_until = NULL,
        deadline = w.deadline + (now() - w.created_at), updated_at = now()
    WHERE w.id = p_id;
    INSERT INTO shardflow.ready (workflow_id, slot, priority) VALUES (r.id, r.slot, r.priority)
    ON CONFLICT (workflow_id) DO UPDATE SET run_at = now();
    PERFORM pg_notify('shardflow_ready', '');
    RETURN 'pending';
END
$$;

-- Send an event to a workflow. Returns false when an event with the same dedup ID
-- was already delivered. Unknown workflow: SF004; finished workflow: SF005.
CREATE OR REPLACE FUNCTION shardflow.send_event(
    p_id text, p_name text, p_payload jsonb, p_dedup_id text DEFAULT NULL)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    -- The ready entry first, then the workflow: the claim's order (it locks ready rows,
    -- then updates their workflows), so a claim under way and this never deadlock.
    PERFORM 1 FROM shardflow.ready WHERE workflow_id = p_id FOR UPDATE;
    SELECT w.id, w.slot, w.status, w.priority INTO r
    FROM shardflow.workflows w WHERE w.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'SF004', MESSAGE = format('unknown workflow ID %s', quote_literal(p_id));
    END IF;
    PERFORM shardflow.check_slot_served(r.slot, p_id);
    IF r.status IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION USING ERRCODE = 'SF005', MESSAGE = format(
            'workflow %s is already %s and takes no more events', quote_literal(p_id), r.status);
    END IF;
    INSERT INTO shardflow.events (workflow_id, name, payload, dedup_id)
    VALUES (p_id, p_name, p_payload, p_dedup_id)
    ON CONFLICT (workflow_id, name, dedup_id) WHERE dedup_id IS NOT NULL DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE shardflow.workflows SET signal_seq = signal_seq + 1, updated_at = now() WHERE id = p_id;
    IF r.status = 'waiting' THEN
        INSERT INTO shardflow.ready (workflow_id, slot, priority) VALUES (r.id, r.slot, r.priority)
        ON CONFLICT (workflow_id) DO UPDATE SET run_at = now();
        PERFORM pg_notify('shardflow_ready', '');
    END IF;
    RETURN true;
END
$$;

-- Take back the workflows of executors that are gone (their advisory lock is free)
-- or stalled (their lease expired): new lease epoch, back to the ready queue, or
-- failed once a workflow has crashed its executors more than p_max_attempts times.
CREATE OR REPLACE FUNCTION shardflow.reclaim_dead(p_me text, p_max_attempts integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_dead text[] := '{}';
    v_count integer;
BEGIN
    FOR r IN SELECT e.owner, e.lock_key, e.lease_until < now() AS expired
             FROM shardflow.executors e WHERE e.owner <> p_me LOOP
        IF r.expired OR pg_try_advisory_xact_lock(r.lock_key) THEN
            v_dead := v_dead || r.owner;
        END IF;
    END LOOP;
    IF cardinality(v_dead) > 0 THEN
        DELETE FROM shardflow.executors WHERE owner = ANY (v_dead);
    END IF;
    WITH lost AS (
        UPDATE shardflow.workflows w
        SET attempt = w.attempt + 1, lease_epoch = w.lease_epoch + 1,
            lease_owner = NULL, lease_until = NULL, updated_at = now(),
            status = CASE WHEN w.attempt + 1 > p_max_attempts THEN 'failed' ELSE 'pending' END,
            error = CASE WHEN w.attempt + 1 > p_max_attempts THEN jsonb_build_object(
                'type', 'RecoveryLimitExceeded', 'code', 'recovery_limit',
                'message', format('the workflow was recovered from a lost executor %s times '
                                  '(limit %s); it is failed instead of looping', w.attempt + 1, p_max_attempts))
                ELSE w.error END,
            finished_at = CASE WHEN w.attempt + 1 > p_max_attempts THEN clock_timestamp() END
        WHERE w.status = 'running'
          AND (w.lease_owner = ANY (v_dead)
               OR NOT EXISTS (SELECT 1 FROM shardflow.executors e WHERE e.owner = w.lease_owner))
        RETURNING w.id, w.slot, w.status, w.priority
    ), rdy AS (
        INSERT INTO shardflow.ready (workflow_id, slot, priority)
        SELECT lost.id, lost.slot, lost.priority FROM lost WHERE lost.status = 'pending'
        ON CONFLICT (workflow_id) DO NOTHING
    )
    SELECT count(*) INTO v_count FROM lost;
    IF v_count > 0 THEN
        PERFORM pg_notify('shardflow_ready', '');
        PERFORM pg_notify('shardflow_done', '');
    END IF;
    RETURN v_count;
END
$$;

-- Register an application table whose rows move with their slot: its slot_column
-- holds the slot (a default of current_setting('shardflow.slot')::int fills it in
-- transactional steps).
CREATE OR REPLACE FUNCTION shardflow.colocate(p_table text, p_slot_column text DEFAULT 'slot')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM p_table::regclass;
    INSERT INTO shardflow.colocated (table_name, slot_column) VALUES (p_table, p_slot_column)
    ON CONFLICT (table_name) DO UPDATE SET slot_column = excluded.slot_column;
END
$$;

-- Slot moves, source side: stop serving the slot and fence every live workflow of it
-- (new lease epoch; running ones go back to the queue, to be replayed on the target).
CREATE OR REPLACE FUNCTION shardflow.fence_slot(p_slot integer, p_epoch bigint)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    UPDATE shardflow.slots SET state = 'moving', epoch = greatest(epoch, p_epoch)
    WHERE slot = p_slot AND state IN ('owned', 'moving');
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'SF006', MESSAGE = format(
            'slot %s is not owned by this shard', p_slot);
    END IF;
    WITH live AS (
        UPDATE shardflow.workflows w
        SET lease_epoch = w.lease_epoch + 1, lease_owner = NULL, lease_until = NULL,
            status = CASE WHEN w.status = 'running' THEN 'pending' ELSE w.status END,
            updated_at = now()
        WHERE w.slot = p_slot AND w.status NOT IN ('completed', 'failed', 'cancelled')
        RETURNING w.id, w.slot, w.status, w.priority
    ), rdy AS (
        INSERT INTO shardflow.ready (workflow_id, slot, priority)
        SELECT live.id, live.slot, live.priority FROM live WHERE live.status = 'pending'
        ON CONFLICT (workflow_id) DO NOTHING
    )
    SELECT count(*) INTO v_count FROM live;
    RETURN v_count;
END
$$;

-- Rows of a slot as JSON, for the copy to the target: finished workflows up to
-- p_before (pre-copy, while the slot is served), or everything else (after fencing).
-- json, not jsonb: json_agg writes each row's text as it goes, where to_jsonb and
-- jsonb_agg built a binary tree of every value first, then printed it (a slot's export
-- took 1.8 times as long, and was a move's largest cost; docs/benchmarks.md).
CREATE OR REPLACE FUNCTION shardflow.export_slot(p_slot integer, p_before timestamptz,
                                                 p_finished boolean)
RETURNS json LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_ids text[];
    v_names text[] := '{}';
    v_tables json[] := '{}';
    v_rows json;
    r record;
BEGIN
    SELECT coalesce(array_agg(w.id), '{}') INTO v_ids FROM shardflow.workflows w
    WHERE w.slot = p_slot AND (
        (p_finished AND w.status IN ('completed', 'failed', 'cancelled')
                    AND w.finished_at < p_before)
        OR (NOT p_finished AND (w.status NOT IN ('completed', 'failed', 'cancelled')
                                OR w.finished_at >= p_before)));
    IF NOT p_finished THEN
        FOR r IN SELECT table_name, slot_column FROM shardflow.colocated LOOP
            EXECUTE format('SELECT coalesce(json_agg(t), ''[]'') FROM %s t WHERE %I = $1',
                           r.table_name::regclass, r.slot_column)
                INTO v_rows USING p_slot;
            v_names := v_names || r.table_name::text;
            v_tables := v_tables || v_rows;
        END LOOP;
    END IF;
    RETURN json_build_object(
        'workflows', (SELECT coalesce(json_agg(w), '[]') FROM shardflow.workflows w
                      WHERE w.id = ANY (v_ids)),
        'steps', (SELECT coalesce(json_agg(s), '[]') FROM shardflow.steps s
                  WHERE s.workflow_id = ANY (v_ids)),
        -- (each event's id is the source's: the import numbers them afresh, in this order)
        'events', (SELECT coalesce(json_agg(e ORDER BY e.id), '[]') FROM shardflow.events e
                   WHERE e.workflow_id = ANY (v_ids)),
        'ready', (SELECT coalesce(json_agg(q), '[]') FROM shardflow.ready q
                  WHERE q.workflow_id = ANY (v_ids)),
        'registry', (SELECT coalesce(json_agg(g), '[]') FROM shardflow.registry g),
        'colocated', (SELECT coalesce(json_object_agg(n, t), '{}')
                      FROM unnest(v_names, v_tables) AS c(n, t)));
END
$$;

-- Delete workflows by ID with the rows that hang off them (steps, events, ready entries);
-- returns the workflows deleted. A slot's drop and the live copy's replacement of
-- pre-copied workflows both go through it, so they delete the same rows.
CREATE OR REPLACE FUNCTION shardflow.delete_workflows(p_ids text[])
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_rows bigint;
BEGIN
    DELETE FROM shardflow.steps WHERE workflow_id = ANY (p_ids);
    DELETE FROM shardflow.events WHERE workflow_id = ANY (p_ids);
    DELETE FROM shardflow.ready WHERE workflow_id = ANY (p_ids);
    DELETE FROM shardflow.workflows WHERE id = ANY (p_ids);
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;

-- Slot moves, target side: apply one exported batch in one transaction, once per
-- (move, phase); the 'live' phase replaces the pre-copied rows of the workflows it
-- carries and makes the slot 'incoming' at the move's epoch.
CREATE OR REPLACE FUNCTION shardflow.import_slot(p_move bigint, p_phase text, p_slot integer,
                                                 p_epoch bigint, p_data jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_rows bigint := 0;
    v_n bigint;
    r record;
BEGIN
    INSERT INTO shardflow.moves_in (move_id, phase, slot) VALUES (p_move, p_phase, p_slot)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN -1;  -- applied before: never twice
    END IF;
    IF p_phase = 'live' THEN
        -- The live copy is the source's final state. A workflow in it may also have come
        -- with the pre-copy (finished then, retried since on the source, which still
        -- served the slot): its earlier copy and that copy's rows give way to this one.
        PERFORM shardflow.delete_workflows(ARRAY(
            SELECT w.id FROM jsonb_to_recordset(p_data -> 'workflows') AS w(id text)));
    END IF;
    -- JSON null and SQL NULL meet in jsonb_populate_recordset: an input of JSON null
    -- comes back as SQL NULL, hence the coalesce (outputs read the same either way).
    INSERT INTO shardflow.workflows (id, slot, routing_key, name, version, status, input,
        output, error, attempt, next_seq, signal_seq, cancel_requested, priority, wake_at,
        deadline, lease_owner, lease_epoch, lease_until, parent, created_at, updated_at,
        finished_at)
    SELECT w.id, w.slot, w.routing_key, w.name, w.version, w.status,
           coalesce(w.input, 'null'::jsonb), w.output, w.error, w.attempt, w.next_seq,
           w.signal_seq, w.cancel_requested, w.priority, w.wake_at, w.deadline, w.lease_owner,
           w.lease_epoch, w.lease_until, w.parent, w.created_at, w.updated_at, w.finished_at
    FROM jsonb_populate_recordset(NULL::shardflow.workflows, p_data -> 'workflows') w
    ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS v_n = ROW_COUNT; v_rows := v_rows + v_n;
    INSERT INTO shardflow.steps
    SELECT * FROM jsonb_populate_recordset(NULL::shardflow.steps, p_data -> 'steps')
    ON CONFLICT (workflow_id, seq) DO NOTHING;
    GET DIAGNOSTICS v_n = ROW_COUNT; v_rows := v_rows + v_n;
    INSERT INTO shardflow.events (workflow_id, name, payload, dedup_id, created_at)
    SELECT e.workflow_id, e.name, e.payload, e.dedup_id, e.created_at
    FROM jsonb_populate_recordset(NULL::shardflow.events, p_data -> 'events') e
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_n = ROW_COUNT; v_rows := v_rows + v_n;
    INSERT INTO shardflow.ready
    SELECT * FROM jsonb_populate_recordset(NULL::shardflow.ready, p_data -> 'ready')
    ON CONFLICT (workflow_id) DO NOTHING;
    -- The workflow names the source knows: starts for the slot are accepted here even
    -- before this shard's own executors have registered.
    INSERT INTO shardflow.registry
    SELECT * FROM jsonb_populate_recordset(NULL::shardflow.registry,
                                           coalesce(p_data -> 'registry', '[]'))
    ON CONFLICT (name, version) DO NOTHING;
    FOR r IN SELECT key, value FROM jsonb_each(coalesce(p_data -> 'colocated', '{}')) LOOP
        EXECUTE format('INSERT INTO %s SELECT * FROM jsonb_populate_recordset(NULL::%s, $1)',
                       r.key::regclass, r.key::regclass) USING r.value;
        GET DIAGNOSTICS v_n = ROW_COUNT; v_rows := v_rows + v_n;
    END LOOP;
    IF p_phase = 'live' THEN
        INSERT INTO shardflow.slots (slot, epoch, state) VALUES (p_slot, p_epoch, 'incoming')
        ON CONFLICT (slot) DO UPDATE SET epoch = excluded.epoch, state = 'incoming';
    END IF;
    UPDATE shardflow.moves_in SET rows_copied = v_rows WHERE move_id = p_move AND phase = p_phase;
    RETURN v_rows;
END
$$;

-- Take or give back a slot's ownership at an epoch (the target after the catalog
-- flip; the source when a move is rolled back).
CREATE OR REPLACE FUNCTION shardflow.own_slot(p_slot integer, p_epoch bigint, p_from text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE shardflow.slots SET state = 'owned', epoch = greatest(epoch, p_epoch)
    WHERE slot = p_slot AND state IN (p_from, 'owned');
    IF FOUND THEN
        PERFORM pg_notify('shardflow_ready', '');
    END IF;
    RETURN FOUND;
END
$$;

-- Remove every row of a slot from this shard (the source after a move, or the target
-- after a rolled-back one), co-located application rows included.
CREATE OR REPLACE FUNCTION shardflow.drop_slot(p_slot integer)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_ids text[];
    v_rows bigint := 0;
    v_n bigint;
    r record;
BEGIN
    SELECT coalesce(array_agg(id), '{}') INTO v_ids FROM shardflow.workflows WHERE slot = p_slot;
    -- No workflow of the slot is inserted here any more (fenced on a source, only
    -- incoming on the target of a rolled-back move): its IDs now are all there are.
    v_rows := shardflow.delete_workflows(v_ids);
    DELETE FROM shardflow.ready WHERE slot = p_slot;  -- entries whose workflow is gone
    FOR r IN SELECT table_name, slot_column FROM shardflow.colocated LOOP
        EXECUTE format('DELETE FROM %s WHERE %I = $1', r.table_name::regclass, r.slot_column)
            USING p_slot;
        GET DIAGNOSTICS v_n = ROW_COUNT; v_rows := v_rows + v_n;
    END LOOP;
    DELETE FROM shardflow.slots WHERE slot = p_slot;
    -- Routers waiting here for a workflow of the slot read its outcome back, find it gone
    -- and follow it to the slot's new shard (at once, not at their next periodic check).
    IF cardinality(v_ids) > 0 THEN
        PERFORM pg_notify('shardflow_done', '');
    END IF;
    RETURN v_rows;
END
$$;

-- Claim up to p_limit due workflows for p_owner with a lease of p_lease seconds, highest
-- priority first, then oldest (claimable picks them). p_names/p_versions, pairwise,
-- restrict the claim to the kinds the executor has code for; NULL takes any (an executor
-- that knows every name and version in the shard's registry). p_limit 0 claims nothing
-- and reads nothing (a checkpoint flush calls this with 0 when no claim rides it).
-- The picked IDs go in as an array (= ANY): the planner then probes the keys of ready and
-- workflows for them, where the set-returning function's estimate of 1,000 rows made it
-- hash-join against scans of both tables.
CREATE OR REPLACE FUNCTION shardflow.claim_workflows(
    p_owner text, p_limit integer, p_lease double precision,
    p_names text[] DEFAULT NULL, p_versions text[] DEFAULT NULL)
RETURNS TABLE (id text, name text, version text, input text, lease_epoch bigint,
               attempt integer, next_seq integer, signal_seq integer,
               cancel_requested boolean, deadline timestamptz, created_at timestamptz,
               routing_key text, parent text, priority integer)
LANGUAGE plpgsql AS $$
BEGIN
    -- Nothing due (every poll of an idle shard, and of a busy one whose starts are handed
    -- off): one probe of the run_at index instead of the bands of claimable (0.26-0.37 ms
    -- of Postgres per poll, ten polls a second per executor). min(), not an EXISTS over
    -- run_at <= now(): see handoff_held_kinds.
    IF p_limit <= 0 OR NOT coalesce((SELECT min(q.run_at) FROM shardflow.ready q) <= now(),
                                    false) THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH picked AS (
        DELETE FROM shardflow.ready r
        WHERE r.workflow_id = ANY (ARRAY(SELECT shardflow.claimable(p_limit, p_names, p_versions)))
        RETURNING r.workflow_id
    )
    UPDATE shardflow.workflows w
    SET status = 'running', lease_owner = p_owner, lease_epoch = w.lease_epoch + 1,
        lease_until = now() + make_interval(secs => p_lease), updated_at = now(), wake_at = NULL
    FROM picked
    WHERE w.id = picked.workflow_id AND w.status IN ('pending', 'sleeping', 'waiting')
    RETURNING w.id, w.name, w.version, w.input::text, w.lease_epoch, w.attempt,
              -- shardflow.resume_seq, written out: a SQL function with a subquery is
              -- not inlined, and called per row it ran its own executor each time.
              greatest(w.next_seq, (SELECT max(s.seq) + 1 FROM shardflow.steps s
                                    WHERE s.workflow_id = w.id)),
              w.signal_seq, w.cancel_requested,
              w.deadline, w.created_at, w.routing_key, w.parent, w.priority;
END
$$;

-- The due ready entries an executor claims next, at most p_limit, locked (SKIP LOCKED):
-- positive priorities first (highest, then oldest), then priority 0 oldest first, then
-- negative ones. A band is read only when those before it came short, and priority 0
-- reads the run_at index up to now() and no further, whatever number of sleeping timers
-- wait behind it (the other bands use the partial index of non-zero priorities).
-- Slot ownership is one index probe per candidate row (a correlated scalar subquery,
-- which the planner does not turn into a join): hashing every owned slot per band cost
-- more than the rest of a small claim.
-- p_names/p_versions (pairwise), when given, keep only workflows of those kinds.
-- Concurrency limits (shardflow.limits), when any: claims on this shard take turns, a
-- name with no room left is passed over (its workflows stay queued, behind none of the
-- others), and a name with some room gets at most that many.
-- Generic plans: with LIMIT v_left known, a custom plan of each band's query looked
-- cheaper than the generic one, so Postgres planned them again on every claim (about
-- 0.2 ms of the 0.5 a claim of one workflow cost); the generic plans probe the same
-- indexes.
CREATE OR REPLACE FUNCTION shardflow.claimable(
    p_limit integer, p_names text[] DEFAULT NULL, p_versions text[] DEFAULT NULL)
RETURNS SETOF text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_all boolean := NOT EXISTS (SELECT 1 FROM shardflow.slots);
    v_left integer := p_limit;
    v_part text[];
    v_lo integer;
    v_hi integer;
    -- names with a limit, the room each has left (pairwise), and those with none left
    v_limited text[];
    v_room integer[];
    v_full text[];
BEGIN
    IF EXISTS (SELECT 1 FROM shardflow.limits) THEN
        PERFORM 1 FROM shardflow.limits ORDER BY name FOR UPDATE;
        SELECT array_agg(l.name ORDER BY l.name), array_agg(l.room ORDER BY l.name)
        INTO v_limited, v_room
        FROM (SELECT m.name,
                     least(m.per_shard,
                           CASE WHEN m.cluster IS NULL THEN NULL
                                WHEN v_all THEN m.cluster ELSE coalesce(m.share, 0) END)
                     - (SELECT count(*) FROM shardflow.workflows w
                        WHERE w.status = 'running' AND w.name = m.name)::integer AS room
              FROM shardflow.limits m) l
        WHERE l.room IS NOT NULL;
    END IF;
    FOREACH v_lo IN ARRAY ARRAY[1, 0, -1000] LOOP
        EXIT WHEN v_left <= 0;
        SELECT array_agg(t.n) INTO v_full FROM unnest(v_limited, v_room) AS t(n, r) WHERE t.r <= 0;
        v_hi := CASE v_lo WHEN 1 THEN 1000 WHEN 0 THEN 0 ELSE -1 END;
        IF v_lo = 0 THEN
            SELECT array_agg(c.workflow_id) INTO v_part FROM (
                SELECT q.workflow_id FROM shardflow.ready q
                WHERE q.run_at <= now() AND q.priority = 0
                  AND (v_all OR (SELECT s.state FROM shardflow.slots s
                                 WHERE s.slot = q.slot) = 'owned')
                  AND (p_names IS NULL OR shardflow.of_kinds(q.workflow_id, p_names, p_versions))
                  AND (v_full IS NULL OR NOT shardflow.named(q.workflow_id, v_full))
                ORDER BY q.run_at
                LIMIT v_left
                FOR UPDATE SKIP LOCKED) c;
        ELSE
            SELECT array_agg(c.workflow_id) INTO v_part FROM (
                SELECT q.workflow_id FROM shardflow.ready q
                WHERE q.run_at <= now() AND q.priority <> 0
                  AND q.priority BETWEEN v_lo AND v_hi
                  AND (v_all OR (SELECT s.state FROM shardflow.slots s
                                 WHERE s.slot = q.slot) = 'owned')
                  AND (p_names IS NULL OR shardflow.of_kinds(q.workflow_id, p_names, p_versions))
                  AND (v_full IS NULL OR NOT shardflow.named(q.workflow_id, v_full))
                ORDER BY q.priority DESC, q.run_at
                LIMIT v_left
                FOR UPDATE SKIP LOCKED) c;
        END IF;
        IF v_part IS NOT NULL AND v_limited IS NOT NULL THEN
            -- At most the room left per limited name, in claim order; the rest stay queued.
            SELECT array_agg(x.id ORDER BY x.ord) INTO v_part
            FROM (SELECT p.id, p.ord, k.name,
                         row_number() OVER (PARTITION BY k.name ORDER BY p.ord) AS n
                  FROM unnest(v_part) WITH ORDINALITY AS p(id, ord)
                  JOIN shardflow.workflows k ON k.id = p.id) x
            LEFT JOIN unnest(v_limited, v_room) AS l(name, room) ON l.name = x.name
            WHERE l.room IS NULL OR x.n <= l.room;
            SELECT array_agg(l.name ORDER BY l.name),
                   array_agg(l.room - coalesce(t.taken, 0)::integer ORDER BY l.name)
            INTO v_limited, v_room
            FROM unnest(v_limited, v_room) AS l(name, room)
            LEFT JOIN (SELECT k.name, count(*) AS taken FROM unnest(v_part) AS p(id)
                       JOIN shardflow.workflows k ON k.id = p.id GROUP BY k.name) t
                ON t.name = l.name;
        END IF;
        IF v_part IS NOT NULL THEN
            RETURN QUERY SELECT unnest(v_part);
            v_left := v_left - cardinality(v_part);
        END IF;
    END LOOP;
END
$$;

-- Whether a workflow's name is one of p_names.
CREATE OR REPLACE FUNCTION shardflow.named(p_id text, p_names text[])
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM shardflow.workflows k WHERE k.id = p_id AND k.name = ANY (p_names))
$$;

-- Whether a workflow is of one of the (name, version) kinds given pairwise.
CREATE OR REPLACE FUNCTION shardflow.of_kinds(p_id text, p_names text[], p_versions text[])
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM shardflow.workflows k
        WHERE k.id = p_id AND (k.name, k.version) IN (SELECT * FROM unnest(p_names, p_versions)))
$$;

-- Check one step of a SQL workflow's definition (see shardflow.define_workflow).
CREATE OR REPLACE FUNCTION shardflow.check_sql_step(p_step jsonb, p_where text)
RETURNS SETOF text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_kinds integer;
    v_key text;
    v_inner jsonb;
BEGIN
    IF jsonb_typeof(p_step) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s must be an object', p_where);
    END IF;
    v_kinds := (p_step ? 'sql')::int + (p_step ? 'parallel')::int + (p_step ? 'wait_event')::int
               + (p_step ? 'sleep_s')::int;
    IF v_kinds <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
            '%s must have exactly one of sql, parallel, wait_event, sleep_s', p_where);
    END IF;
    FOR v_key IN SELECT jsonb_object_keys(p_step) LOOP
        IF v_key NOT IN ('name', 'sql', 'retries', 'timeout_s', 'compensate', 'parallel',
                         'wait_event', 'sleep_s') THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                '%s has an unknown field %s', p_where, v_key);
        END IF;
    END LOOP;
    IF p_step ? 'sql' THEN
        IF jsonb_typeof(p_step -> 'name') IS DISTINCT FROM 'string' OR p_step ->> 'name' = ''
           OR jsonb_typeof(p_step -> 'sql') IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                '%s: a SQL step has a non-empty "name" and a "sql" string', p_where);
        END IF;
        IF p_step ? 'compensate' AND jsonb_typeof(p_step -> 'compensate') <> 'string' THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                '%s: "compensate" is a SQL string', p_where);
        END IF;
        IF p_step ? 'retries' AND (jsonb_typeof(p_step -> 'retries') <> 'number'
           OR (p_step ->> 'retries')::numeric NOT BETWEEN 0 AND 100
           OR (p_step ->> 'retries')::numeric % 1 <> 0) THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                '%s: "retries" is a whole number from 0 to 100', p_where);
        END IF;
        RETURN NEXT p_step ->> 'name';
    ELSIF p_step ? 'parallel' THEN
        IF jsonb_typeof(p_step -> 'parallel') <> 'array' OR jsonb_array_length(p_step -> 'parallel') = 0 THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                '%s: "parallel" is a non-empty array of SQL steps', p_where);
        END IF;
        FOR v_inner IN SELECT jsonb_array_elements(p_step -> 'parallel') LOOP
            IF NOT v_inner ? 'sql' THEN
                RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                    '%s: a parallel group holds SQL steps only', p_where);
            END IF;
            RETURN QUERY SELECT shardflow.check_sql_step(v_inner, p_where || ' (parallel)');
        END LOOP;
    ELSIF p_step ? 'wait_event' THEN
        IF jsonb_typeof(p_step -> 'wait_event') <> 'string' OR p_step ->> 'wait_event' = '' THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                '%s: "wait_event" is an event name', p_where);
        END IF;
        RETURN NEXT p_step ->> 'wait_event';
    ELSIF jsonb_typeof(p_step -> 'sleep_s') <> 'number' OR (p_step ->> 'sleep_s')::numeric < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
            '%s: "sleep_s" is a number of seconds', p_where);
    END IF;
    IF p_step ? 'timeout_s' AND (jsonb_typeof(p_step -> 'timeout_s') <> 'number'
       OR (p_step ->> 'timeout_s')::numeric <= 0) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
            '%s: "timeout_s" is a positive number of seconds', p_where);
    END IF;
END
$$;

-- Define (or redefine) a workflow in SQL: {"steps": [...]} where a step is
--   {"name", "sql", "retries"?, "timeout_s"?, "compensate"?}  a transactional step: its
--       statement runs with $1 = the workflow's input and $2 = the results so far (jsonb,
--       by step name); its first column of the first row is its result; "compensate" runs,
--       if the workflow fails or is cancelled later, with $3 = that result as well;
--   {"parallel": [SQL steps]}  run at once; {"wait_event": name, "timeout_s"?}  its
--       payload is the result under that name; {"sleep_s": n}  a durable timer.
-- Returns the definition's version ('sql-' and a hash): instances started from now on use
-- it; running ones keep theirs. A name that a Python executor registered is refused.
CREATE OR REPLACE FUNCTION shardflow.define_workflow(p_name text, p_definition jsonb)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_version text := 'sql-' || left(md5(p_definition::text), 12);
    v_names text[];
BEGIN
    IF p_name IS NULL OR length(p_name) NOT BETWEEN 1 AND 200 OR p_name ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'a workflow name is 1 to 200 characters';
    END IF;
    IF jsonb_typeof(p_definition) IS DISTINCT FROM 'object'
       OR jsonb_typeof(p_definition -> 'steps') IS DISTINCT FROM 'array'
       OR jsonb_array_length(p_definition -> 'steps') = 0
       OR (SELECT count(*) FROM jsonb_object_keys(p_definition)) <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'a definition is {"steps": [...]} with at least one step';
    END IF;
    SELECT array_agg(n) INTO v_names FROM (
        SELECT shardflow.check_sql_step(s.value, format('step %s', s.ord)) AS n
        FROM jsonb_array_elements(p_definition -> 'steps') WITH ORDINALITY AS s(value, ord)) t;
    IF (SELECT count(DISTINCT n) FROM unnest(v_names) n) <> cardinality(v_names) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'step and event names must be unique within a definition';
    END IF;
    IF EXISTS (SELECT 1 FROM shardflow.registry g WHERE g.name = p_name AND g.version NOT LIKE 'sql-%') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
            'workflow %s is defined in code; pick another name', quote_literal(p_name));
    END IF;
    INSERT INTO shardflow.sql_workflows (name, version, definition)
    VALUES (p_name, v_version, p_definition) ON CONFLICT DO NOTHING;
    INSERT INTO shardflow.registry (name, version) VALUES (p_name, v_version)
    ON CONFLICT (name, version) DO UPDATE SET registered_at = now();
    RETURN v_version;
END
$$;
