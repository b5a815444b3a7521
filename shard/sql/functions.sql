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

CREATE OR REPLACE FUNCTION shardflow.check_workflow_id(p_id text)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_id IS NULL OR length(p_id) = 0 OR length(p_id) > 200 OR p_id ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION USING ERRCODE = 'SF002', MESSAGE = format(
            'invalid workflow ID %s: it must be 1 to 200 characters without control characters',
            coalesce(quote_literal(left(p_id, 40)), 'NULL'));
    END IF;
END
$$;

-- Start many workflows in one statement. Idempotent by ID: an existing ID with the
-- same name and input is returned with created = false; with another input,
-- conflict = true and nothing is written for it. Unknown names or invalid IDs
-- reject the whole batch (nothing is written).
CREATE OR REPLACE FUNCTION shardflow.start_workflows(
    p_ids text[], p_names text[], p_inputs jsonb[], p_routing_keys text[],
    p_parents text[], p_timeouts double precision[])
RETURNS TABLE (id text, slot integer, status text, created boolean, conflict boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_unknown text;
    v_bad text;
    v_slots integer := shardflow.slot_count();
    v_created text[];
BEGIN
    SELECT n INTO v_unknown FROM unnest(p_names) AS n
    WHERE NOT EXISTS (SELECT 1 FROM shardflow.registry r WHERE r.name = n) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'SF001', MESSAGE = format(
            'unknown workflow %s: no executor of this shard has registered it', quote_literal(v_unknown));
    END IF;
    FOR v_bad IN SELECT x FROM unnest(p_ids) AS x LOOP
        PERFORM shardflow.check_workflow_id(v_bad);
    END LOOP;
    IF EXISTS (SELECT 1 FROM shardflow.slots) THEN
        SELECT t.id INTO v_bad
        FROM unnest(p_ids, p_routing_keys) AS t(id, routing_key)
        WHERE NOT EXISTS (
            SELECT 1 FROM shardflow.slots s
            WHERE s.slot = shardflow.slot_of(coalesce(t.routing_key, t.id), v_slots)
              AND s.state = 'owned')
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'SF006', MESSAGE = format(
                'the slot of workflow %s is not owned by this shard (moved or moving); '
                'refresh the slot map and retry', quote_literal(v_bad));
        END IF;
    END IF;
    FOR v_bad IN SELECT x FROM unnest(p_routing_keys) AS x WHERE x IS NOT NULL LOOP
        IF length(v_bad) = 0 OR length(v_bad) > 200 THEN
            RAISE EXCEPTION USING ERRCODE = 'SF002', MESSAGE =
                'invalid routing key: it must be 1 to 200 characters';
        END IF;
    END LOOP;

    WITH input AS (
        SELECT * FROM unnest(p_ids, p_names, p_inputs, p_routing_keys, p_parents, p_timeouts)
            AS t(id, name, input, routing_key, parent, timeout_s)
    ), ins AS (
        INSERT INTO shardflow.workflows AS w
            (id, slot, routing_key, name, version, status, input, parent, deadline)
        SELECT i.id, shardflow.slot_of(coalesce(i.routing_key, i.id), v_slots),
               coalesce(i.routing_key, i.id), i.name,
               (SELECT r.version FROM shardflow.registry r WHERE r.name = i.name
                ORDER BY r.registered_at DESC, r.version DESC LIMIT 1),
               'pending', i.input, i.parent,
               now() + make_interval(secs => coalesce(i.timeout_s, (
                   SELECT r.timeout_s FROM shardflow.registry r WHERE r.name = i.name
                   ORDER BY r.registered_at DESC, r.version DESC LIMIT 1)))
        FROM input i
        ON CONFLICT ON CONSTRAINT workflows_pkey DO NOTHING
        RETURNING w.id, w.slot
    ), rdy AS (
        INSERT INTO shardflow.ready (workflow_id, slot) SELECT ins.id, ins.slot FROM ins
    )
    SELECT coalesce(array_agg(ins.id), '{}') INTO v_created FROM ins;

    IF cardinality(v_created) > 0 THEN
        PERFORM pg_notify('shardflow_ready', '');
    END IF;

    RETURN QUERY
    SELECT t.id, w.slot, w.status,
           t.id = ANY (v_created) AND t.ord = min(t.ord) OVER (PARTITION BY t.id),
           w.name <> t.name OR w.input <> t.input
    FROM unnest(p_ids, p_names, p_inputs) WITH ORDINALITY AS t(id, name, input, ord)
    JOIN shardflow.workflows w ON w.id = t.id
    ORDER BY t.ord;
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
        'input', w.input, 'output', w.output, 'error', w.error, 'attempt', w.attempt,
        'slot', w.slot, 'routing_key', w.routing_key, 'parent', w.parent,
        'created_at', w.created_at, 'updated_at', w.updated_at,
        'finished_at', w.finished_at, 'wake_at', w.wake_at,
        'steps', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                'seq', s.seq, 'name', s.name, 'status', s.status, 'output', s.output,
                'error', s.error, 'attempts', s.attempts, 'started_at', s.started_at,
                'finished_at', s.finished_at) ORDER BY s.seq)
            FROM shardflow.steps s WHERE s.workflow_id = w.id), '[]'::jsonb),
        'compensations', '[]'::jsonb)
    FROM shardflow.workflows w WHERE w.id = p_id
$$;

-- Request cancellation. A workflow that never ran is cancelled at once; a running
-- one stops at its next checkpoint; a sleeping or waiting one is woken to stop.
CREATE OR REPLACE FUNCTION shardflow.cancel_workflow(p_id text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    UPDATE shardflow.workflows w
    SET cancel_requested = true, signal_seq = w.signal_seq + 1, updated_at = now(),
        status = CASE WHEN w.status = 'pending' AND w.next_seq = 0 THEN 'cancelled' ELSE w.status END,
        finished_at = CASE WHEN w.status = 'pending' AND w.next_seq = 0 THEN now() END
    WHERE w.id = p_id AND w.status NOT IN ('completed', 'failed', 'cancelled')
    RETURNING w.id, w.slot, w.status INTO r;
    IF NOT FOUND THEN
        SELECT w.status INTO r FROM shardflow.workflows w WHERE w.id = p_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'SF004', MESSAGE = format('unknown workflow ID %s', quote_literal(p_id));
        END IF;
        RETURN r.status;
    END IF;
    IF r.status = 'cancelled' THEN
        DELETE FROM shardflow.ready WHERE workflow_id = p_id;
        PERFORM pg_notify('shardflow_done', '');
    ELSIF r.status IN ('sleeping', 'waiting', 'pending') THEN
        INSERT INTO shardflow.ready (workflow_id, slot) VALUES (r.id, r.slot)
        ON CONFLICT (workflow_id) DO UPDATE SET run_at = now();
        PERFORM pg_notify('shardflow_ready', '');
    END IF;
    RETURN r.status;
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
    SELECT w.id, w.slot, w.status INTO r FROM shardflow.workflows w WHERE w.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'SF004', MESSAGE = format('unknown workflow ID %s', quote_literal(p_id));
    END IF;
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
        INSERT INTO shardflow.ready (workflow_id, slot) VALUES (r.id, r.slot)
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
            finished_at = CASE WHEN w.attempt + 1 > p_max_attempts THEN now() END
        WHERE w.status = 'running'
          AND (w.lease_owner = ANY (v_dead)
               OR NOT EXISTS (SELECT 1 FROM shardflow.executors e WHERE e.owner = w.lease_owner))
        RETURNING w.id, w.slot, w.status
    ), rdy AS (
        INSERT INTO shardflow.ready (workflow_id, slot)
        SELECT lost.id, lost.slot FROM lost WHERE lost.status = 'pending'
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
