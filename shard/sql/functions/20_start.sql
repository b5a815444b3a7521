-- Starts: the batched start (start_workflows) beside its single-row twin (start_one),
-- the problems a start reports, and the hand-off of a start to a listening executor.
-- Applied (CREATE OR REPLACE) after the migrations on every `migrate`, in file name
-- order; errors carry SQLSTATEs of class SF (shardflow/infra/errors.py).

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
    ELSIF p_problem = 'id_elsewhere' THEN
        RAISE EXCEPTION USING ERRCODE = 'SF003', MESSAGE = format(
            'workflow ID %s is taken by a workflow placed by another routing key',
            quote_literal(p_id));
    ELSIF p_problem = 'slot_moved' THEN
        RAISE EXCEPTION USING ERRCODE = 'SF006', MESSAGE = format(
            'the slot of workflow %s is not owned by this shard (moved or moving); '
            'refresh the slot map and retry', quote_literal(p_id));
    END IF;
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
    p_key text, p_parent text, p_priority integer, p_traceparent text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT json_build_object('id', p_id, 'name', p_name, 'version', p_version,
                             'input', p_input::text, 'lease_epoch', 1,
                             'deadline', now() + make_interval(secs => p_timeout),
                             'created_at', now(), 'routing_key', p_key, 'parent', p_parent,
                             'priority', coalesce(p_priority, 0),
                             'traceparent', p_traceparent)::text
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
    p_partial boolean DEFAULT false, p_traceparents text[] DEFAULT NULL,
    p_prefer text DEFAULT NULL)
RETURNS TABLE (id text, slot integer, status text, created boolean, conflict boolean,
               problem text, handoff text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    -- Read once here: a call of the SQL function slot_count() in the query below was
    -- planned again on every start (docs/benchmarks.md, "What was tried").
    v_slots integer := (SELECT s.value::integer FROM shardflow.settings s WHERE s.key = 'slots');
BEGIN
    IF shardflow.on_citus() THEN
        RETURN QUERY SELECT * FROM shardflow.start_each(
            p_ids, p_names, p_inputs, p_routing_keys, p_parents, p_timeouts, p_priorities,
            p_partial, coalesce(v_slots, 1024), p_traceparents, p_prefer);
        RETURN;
    END IF;
    IF cardinality(p_ids) = 1 THEN
        -- One start (every start at low load, and most children): the same writes and
        -- answers, statement by statement. Postgres builds every node of the batch
        -- query's plan at each run; for one row that was most of its cost.
        RETURN QUERY SELECT * FROM shardflow.start_one(
            p_ids[1], p_names[1], p_inputs[1], p_routing_keys[1], p_parents[1],
            p_timeouts[1], p_priorities[1], coalesce(v_slots, 1024), p_traceparents[1],
            p_prefer);
        RETURN;
    END IF;
    RETURN QUERY
    WITH input AS (
        SELECT t.*, coalesce(t.routing_key, t.id) AS key
        FROM unnest(p_ids, p_names, p_inputs, p_routing_keys, p_parents, p_timeouts,
                    p_priorities, p_traceparents)
            WITH ORDINALITY AS t(id, name, input, routing_key, parent, timeout_s, priority,
                                 traceparent, ord)
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
            THEN 'slot_moved'
            WHEN k.key = k.id AND EXISTS (SELECT 1 FROM shardflow.directory d
                                          WHERE d.id = k.id AND d.routing_key <> k.id)
            THEN 'id_elsewhere' END) AS issue
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
            -- The caller's own executor first (p_prefer: the fast path), else at random
            -- in proportion to each one's room (the first of exponential clocks running
            -- at those rates): the emptier executors get more.
            ORDER BY t.owner IS DISTINCT FROM p_prefer, -ln(1.0 - random()) / t.room
            LIMIT 1) t ON c.issue IS NULL
    ), ins AS (
        INSERT INTO shardflow.workflows AS w
            (id, slot, routing_key, name, version, status, input, parent, deadline, priority,
             lease_owner, lease_epoch, lease_until, traceparent)
        SELECT c.id, c.slot, c.key, c.name, c.version,
               CASE WHEN c.owner IS NULL THEN 'pending' ELSE 'running' END, c.input, c.parent,
               now() + make_interval(secs => c.timeout), coalesce(c.priority, 0),
               c.owner, CASE WHEN c.owner IS NULL THEN 0 ELSE 1 END, c.lease_until,
               c.traceparent
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
                                            c.key, c.parent, c.priority, c.traceparent) AS item
              FROM placed c JOIN ins ON ins.id = c.id AND ins.lease_owner = c.owner
              WHERE c.owner IS DISTINCT FROM p_prefer  -- the caller's own: in the answer
              ORDER BY c.id, c.ord) p
    ), handoff AS (
        SELECT pg_notify('shardflow_handoff_' || h.lock_key, '[' || string_agg(h.item, ',') || ']')
        FROM handed h GROUP BY h.lock_key, h.part
    )
    SELECT c.id, c.slot, coalesce(ins.status, w.status),
           ins.id IS NOT NULL AND c.ord = min(c.ord) OVER (PARTITION BY c.id),
           coalesce(ins.id IS NULL AND (w.name <> c.name OR w.input <> c.input), false),
           c.issue,
           CASE WHEN ins.lease_owner = p_prefer AND c.ord = min(c.ord) OVER (PARTITION BY c.id)
                THEN shardflow.handoff_item(c.id, c.name, c.version, c.input, c.timeout, c.key,
                                            c.parent, c.priority, c.traceparent) END
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
    p_timeout double precision, p_priority integer, p_slots integer,
    p_traceparent text DEFAULT NULL, p_prefer text DEFAULT NULL)
RETURNS TABLE (id text, slot integer, status text, created boolean, conflict boolean,
               problem text, handoff text)
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
    v_held text[];
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
        ELSIF v_key = p_id AND EXISTS (SELECT FROM shardflow.directory d
                                       WHERE d.id = p_id AND d.routing_key <> p_id) THEN
            problem := 'id_elsewhere';  -- read after the slot lock: see directory_claim
        END IF;
    END IF;
    IF problem IS NULL THEN
        v_kind := p_name || '@' || v_version;
        IF octet_length(p_input::text) <= 2000
           AND NOT EXISTS (SELECT FROM shardflow.limits l WHERE l.name = p_name) THEN
            -- The kinds due in the queue, read first and called with no table around it:
            -- handoff_held_kinds reads tables, and Citus cannot run such a function from
            -- inside a query on a shard.
            v_held := '{}';
            IF (SELECT min(q.run_at) FROM shardflow.ready q) <= now() THEN
                v_held := shardflow.handoff_held_kinds();
            END IF;
            -- The caller's own executor first (the fast path), else one at random.
            SELECT e.owner, e.lock_key, e.lease_until INTO v_owner, v_lock, v_until
            FROM shardflow.executors e
            WHERE e.handoff_until > now() AND v_kind = ANY (e.kinds)
              AND NOT (e.kinds && v_held)
            ORDER BY e.owner IS DISTINCT FROM p_prefer,
                     -ln(1.0 - random()) / greatest(coalesce(e.handoff_room, 1), 1)
            LIMIT 1;
        END IF;
        INSERT INTO shardflow.workflows AS w
            (id, slot, routing_key, name, version, status, input, parent, deadline, priority,
             lease_owner, lease_epoch, lease_until, traceparent)
        VALUES (p_id, start_one.slot, v_key, p_name, v_version,
                CASE WHEN v_owner IS NULL THEN 'pending' ELSE 'running' END, p_input,
                p_parent, now() + make_interval(secs => coalesce(p_timeout, v_timeout)),
                coalesce(p_priority, 0), v_owner,
                CASE WHEN v_owner IS NULL THEN 0 ELSE 1 END, v_until, p_traceparent)
        ON CONFLICT ON CONSTRAINT workflows_pkey DO NOTHING
        RETURNING w.status INTO v_status;
        created := FOUND;
        IF created AND v_owner IS NULL THEN
            INSERT INTO shardflow.ready (workflow_id, slot, priority)
            VALUES (p_id, start_one.slot, coalesce(p_priority, 0));
            PERFORM pg_notify('shardflow_ready', '');
        ELSIF created THEN
            handoff := shardflow.handoff_item(
                p_id, p_name, v_version, p_input, coalesce(p_timeout, v_timeout), v_key,
                p_parent, p_priority, p_traceparent);
            IF v_owner IS DISTINCT FROM p_prefer THEN  -- the caller's own takes the answer
                PERFORM pg_notify('shardflow_handoff_' || v_lock, '[' || handoff || ']');
                handoff := NULL;
            END IF;
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

-- Whether this server runs Citus: there, statements Citus cannot plan whole (an INSERT in
-- a CTE) go one by one (docs/citus.md).
CREATE OR REPLACE FUNCTION shardflow.on_citus() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT to_regclass('pg_catalog.pg_dist_node') IS NOT NULL
$$;

-- start_workflows on Citus: start_one for each start, all or nothing unless p_partial
-- (a problem rolls every start of the batch back, and the answers say so).
CREATE OR REPLACE FUNCTION shardflow.start_each(
    p_ids text[], p_names text[], p_inputs jsonb[], p_routing_keys text[],
    p_parents text[], p_timeouts double precision[], p_priorities integer[],
    p_partial boolean, p_slots integer, p_traceparents text[], p_prefer text)
RETURNS TABLE (id text, slot integer, status text, created boolean, conflict boolean,
               problem text, handoff text)
LANGUAGE plpgsql AS $$
DECLARE
    s record;
    a_id text[] := '{}';
    a_slot integer[] := '{}';
    a_status text[] := '{}';
    a_created boolean[] := '{}';
    a_conflict boolean[] := '{}';
    a_problem text[] := '{}';
    a_handoff text[] := '{}';
    v_bad boolean := false;
BEGIN
    BEGIN
        FOR i IN 1 .. cardinality(p_ids) LOOP
            SELECT * INTO s FROM shardflow.start_one(
                p_ids[i], p_names[i], p_inputs[i], p_routing_keys[i], p_parents[i],
                p_timeouts[i], p_priorities[i], p_slots, p_traceparents[i], p_prefer);
            a_id := a_id || s.id;
            a_slot := a_slot || s.slot;
            a_status := a_status || s.status;
            a_created := a_created || s.created;
            a_conflict := a_conflict || s.conflict;
            a_problem := a_problem || s.problem;
            a_handoff := a_handoff || s.handoff;
            v_bad := v_bad OR s.problem IS NOT NULL;
        END LOOP;
        IF v_bad AND NOT p_partial THEN
            RAISE EXCEPTION USING ERRCODE = 'SF900', MESSAGE = 'roll the batch back';
        END IF;
    EXCEPTION WHEN SQLSTATE 'SF900' THEN
        FOR i IN 1 .. cardinality(a_id) LOOP
            IF a_created[i] THEN
                a_status[i] := NULL;
                a_created[i] := false;
                a_handoff[i] := NULL;
            END IF;
        END LOOP;
    END;
    RETURN QUERY SELECT * FROM unnest(a_id, a_slot, a_status, a_created, a_conflict, a_problem,
                                      a_handoff);
END
$$;
