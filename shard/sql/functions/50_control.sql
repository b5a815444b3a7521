-- Control: a workflow's status, cancel, retry and events (the SQL API of README).
-- Applied (CREATE OR REPLACE) after the migrations on every `migrate`, in file name
-- order; errors carry SQLSTATEs of class SF (shardflow/infra/errors.py).

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

-- A child ended outside a checkpoint flush (cancelled while pending, failed by the
-- recovery limit): its parent is signalled like the flush signals it, and woken if it
-- waits. Locks the parent's ready entry before its row (the claim's order).
CREATE OR REPLACE FUNCTION shardflow.signal_parent(p_parent text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    PERFORM 1 FROM shardflow.ready WHERE workflow_id = p_parent FOR UPDATE;
    UPDATE shardflow.workflows p SET signal_seq = p.signal_seq + 1, updated_at = now()
    WHERE p.id = p_parent AND p.status NOT IN ('completed', 'failed', 'cancelled')
    RETURNING p.id, p.slot, p.status, p.priority INTO r;
    IF FOUND AND r.status = 'waiting' THEN
        INSERT INTO shardflow.ready (workflow_id, slot, priority) VALUES (r.id, r.slot, r.priority)
        ON CONFLICT (workflow_id) DO UPDATE SET run_at = excluded.run_at;
        PERFORM pg_notify('shardflow_ready', '');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION shardflow.cancel_workflow(p_id text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r record;
    c record;
    v_slot integer;
    v_unstarted boolean;
    v_now timestamptz;
BEGIN
    -- The ready entry first, then the workflow: the claim's order (it locks ready rows,
    -- then updates their workflows), so a claim under way and this never deadlock.
    PERFORM 1 FROM shardflow.ready WHERE workflow_id = p_id FOR UPDATE;
    -- Whether it never ran (cancelled at once), read first: Citus refuses functions of
    -- the row's columns, and volatile ones, in an UPDATE.
    -- (Functions that read the shard's tables are called with values, never per row of
    -- a statement on them: Citus cannot run a query from inside one on a shard.)
    SELECT w.slot, w.next_seq = 0 INTO v_slot, v_unstarted
    FROM shardflow.workflows w WHERE w.id = p_id;
    IF FOUND THEN
        PERFORM shardflow.check_slot_served(v_slot, p_id);
    END IF;
    v_unstarted := v_unstarted AND NOT EXISTS (SELECT FROM shardflow.steps s
                                               WHERE s.workflow_id = p_id);
    v_now := clock_timestamp();
    UPDATE shardflow.workflows w
    SET cancel_requested = true, signal_seq = w.signal_seq + 1, updated_at = now(),
        status = CASE WHEN w.status = 'pending' AND v_unstarted THEN 'cancelled' ELSE w.status END,
        finished_at = CASE WHEN w.status = 'pending' AND v_unstarted THEN v_now END
    WHERE w.id = p_id AND w.status NOT IN ('completed', 'failed', 'cancelled')
    RETURNING w.id, w.slot, w.status, w.priority, w.parent INTO r;
    IF NOT FOUND THEN
        SELECT w.status INTO r FROM shardflow.workflows w WHERE w.id = p_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'SF004', MESSAGE = format('unknown workflow ID %s', quote_literal(p_id));
        END IF;
        RETURN r.status;
    END IF;
    -- Its children on this shard (they inherit its routing key) are cancelled with it.
    FOR c IN SELECT k.id FROM shardflow.workflows k
             WHERE k.parent = p_id AND k.status NOT IN ('completed', 'failed', 'cancelled') LOOP
        PERFORM shardflow.cancel_workflow(c.id);
    END LOOP;
    IF r.status = 'cancelled' THEN
        DELETE FROM shardflow.ready WHERE workflow_id = p_id;
        PERFORM pg_notify('shardflow_done', '');
        IF r.parent IS NOT NULL THEN
            PERFORM shardflow.signal_parent(r.parent);
        END IF;
    ELSIF r.status IN ('sleeping', 'waiting', 'pending') THEN
        INSERT INTO shardflow.ready (workflow_id, slot, priority) VALUES (r.id, r.slot, r.priority)
        ON CONFLICT (workflow_id) DO UPDATE SET run_at = excluded.run_at;
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
    -- The deadline moves by the time since the start (computed here: Citus refuses a
    -- stable function of the row's columns in an UPDATE).
    SELECT w.id, w.slot, w.status, w.error, w.next_seq, w.priority,
           w.deadline + (now() - w.created_at) AS deadline INTO r
    FROM shardflow.workflows w WHERE w.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'SF004', MESSAGE = format('unknown workflow ID %s', quote_literal(p_id));
    END IF;
    r.next_seq := shardflow.resume_seq(p_id, r.next_seq);
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
        deadline = r.deadline, updated_at = now()
    WHERE w.id = p_id;
    INSERT INTO shardflow.ready (workflow_id, slot, priority) VALUES (r.id, r.slot, r.priority)
    ON CONFLICT (workflow_id) DO UPDATE SET run_at = excluded.run_at;
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
        ON CONFLICT (workflow_id) DO UPDATE SET run_at = excluded.run_at;
        PERFORM pg_notify('shardflow_ready', '');
    END IF;
    RETURN true;
END
$$;
