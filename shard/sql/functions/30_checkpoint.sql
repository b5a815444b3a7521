-- Checkpoints: the single-record flush (flush_one), twin of the batched
-- checkpoint_flush_plain of shard/sql/queries.sql, and where a replay resumes.
-- Applied (CREATE OR REPLACE) after the migrations on every `migrate`, in file name
-- order; errors carry SQLSTATEs of class SF (shardflow/infra/errors.py).

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
    st record;
    v_status text;
    v_output jsonb;
    v_error jsonb;
    v_payload text;
    v_now timestamptz;
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
        -- clock_timestamp(), not now(): see _flush_update in queries.sql (a variable:
        -- Citus refuses a volatile function in an UPDATE).
        v_now := clock_timestamp();
        UPDATE shardflow.workflows w SET
            status = r.status,
            output = r.output::jsonb,
            error = r.error::jsonb,
            next_seq = greatest(w.next_seq, r.next_seq),
            wake_at = r.run_at,
            lease_owner = NULL,
            lease_until = NULL,
            finished_at = CASE WHEN r.status IN ('completed', 'failed', 'cancelled')
                               THEN v_now END,
            updated_at = now()
        WHERE w.id = r.id AND w.lease_epoch = r.epoch AND (w.status = 'running') IS TRUE
        RETURNING w.status, w.cancel_requested, w.output, w.error
        INTO v_status, cancel_requested, v_output, v_error;
    END IF;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF shardflow.on_citus() THEN
        -- A row at a time: Citus runs an INSERT ... SELECT from a function by collecting
        -- the rows and copying them into the table (a millisecond each here); an INSERT
        -- of values it routes straight to the shard.
        FOR st IN SELECT * FROM json_to_recordset(r.steps) AS s(seq integer, name text,
                      status text, output text, error text, attempts integer,
                      started_at timestamptz) LOOP
            INSERT INTO shardflow.steps
                (workflow_id, seq, name, status, output, error, attempts, started_at)
            VALUES (r.id, st.seq, st.name, st.status, st.output::jsonb, st.error::jsonb,
                    st.attempts, st.started_at)
            ON CONFLICT (workflow_id, seq) DO UPDATE
                SET status = excluded.status, output = excluded.output, error = excluded.error,
                    attempts = excluded.attempts, finished_at = excluded.finished_at
                WHERE shardflow.steps.status = 'retrying';
        END LOOP;
    ELSE
        INSERT INTO shardflow.steps
            (workflow_id, seq, name, status, output, error, attempts, started_at)
        SELECT r.id, s.seq, s.name, s.status, s.output::jsonb, s.error::jsonb, s.attempts,
               s.started_at
        FROM json_to_recordset(r.steps) AS s(seq integer, name text, status text,
            output text, error text, attempts integer, started_at timestamptz)
        ON CONFLICT (workflow_id, seq) DO UPDATE
            SET status = excluded.status, output = excluded.output, error = excluded.error,
                attempts = excluded.attempts, finished_at = excluded.finished_at
            WHERE shardflow.steps.status = 'retrying';
    END IF;
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

-- The checkpoint flushes on Citus (docs/citus.md), record by record: Citus plans a
-- statement with an INSERT in a CTE piece by piece (each CTE its own statement, results
-- shipped between them), which the batched flushes of queries.sql do not survive; each
-- statement here is planned whole, on the schema's node. The same writes and answers as
-- checkpoint_flush (the claim riding it included), in the columns of its result.
CREATE OR REPLACE FUNCTION shardflow.flush_each(
    p_records json, p_owner text, p_limit integer, p_lease double precision,
    p_names text[], p_versions text[])
RETURNS TABLE (claimed boolean, id text, name text, version text, input text,
               lease_epoch bigint, attempt integer, next_seq integer, signal_seq integer,
               cancel_requested boolean, deadline timestamptz, created_at timestamptz,
               routing_key text, parent text, priority integer, traceparent text,
               notified bigint)
LANGUAGE plpgsql AS $$
DECLARE
    e json;
    r record;
    f record;
    w record;
BEGIN
    FOR e IN SELECT x.value FROM json_array_elements(p_records) AS x LOOP
        SELECT t.* INTO r FROM json_to_record(e) AS t(id text, status text, run_at timestamptz,
            seen_signal integer, parent text);
        -- The row, its steps and the outcome NOTIFY: flush_one's writes.
        SELECT o.id, o.cancel_requested, o.notified INTO f
        FROM shardflow.flush_one(json_build_array(e)) AS o;
        CONTINUE WHEN f.id IS NULL;  -- fenced off: another run owns the workflow now
        IF r.status IN ('sleeping', 'waiting') THEN
            -- Back to the ready queue at its timer, or now when an event, a child's end or
            -- a cancel came since the run looked.
            SELECT x.slot, x.priority, x.signal_seq <> r.seen_signal OR x.cancel_requested
                   AS woken
            INTO w FROM shardflow.workflows x WHERE x.id = r.id;
            IF w.woken OR r.run_at IS NOT NULL THEN
                INSERT INTO shardflow.ready (workflow_id, slot, run_at, priority)
                VALUES (r.id, w.slot, CASE WHEN w.woken THEN now() ELSE r.run_at END,
                        w.priority)
                ON CONFLICT (workflow_id) DO UPDATE
                    SET run_at = least(shardflow.ready.run_at, excluded.run_at);
            END IF;
        ELSIF r.parent IS NOT NULL AND r.status IN ('completed', 'failed', 'cancelled') THEN
            PERFORM shardflow.signal_parent(r.parent);
        END IF;
        claimed := false;
        id := f.id;
        cancel_requested := f.cancel_requested;
        notified := f.notified;
        RETURN NEXT;
    END LOOP;
    IF p_limit > 0 THEN
        RETURN QUERY SELECT true, c.*, NULL::bigint
        FROM shardflow.claim_workflows(p_owner, p_limit, p_lease, p_names, p_versions) AS c;
    END IF;
END
$$;

-- The fence of a transactional step (workflow_lock_for_step in queries.sql): the row
-- locked under the lease epoch unless this step is recorded already, then the
-- workflow's slot and ID set for the transaction (app tables can default to them). The
-- settings are made after the UPDATE, not in its RETURNING: Citus refuses a volatile
-- function there.
CREATE OR REPLACE FUNCTION shardflow.lock_for_step(p_id text, p_epoch bigint, p_seq integer)
RETURNS TABLE (cancel_requested boolean, slot text, workflow_id text)
LANGUAGE plpgsql AS $$
DECLARE
    v_slot integer;
    v_cancel boolean;
BEGIN
    UPDATE shardflow.workflows w SET next_seq = greatest(w.next_seq, p_seq + 1), updated_at = now()
    WHERE w.id = p_id AND w.lease_epoch = p_epoch AND w.status = 'running'
      AND NOT EXISTS (SELECT FROM shardflow.steps s
                      WHERE s.workflow_id = p_id AND s.seq = p_seq AND s.status <> 'retrying')
    RETURNING w.cancel_requested, w.slot INTO v_cancel, v_slot;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    cancel_requested := v_cancel;
    slot := set_config('shardflow.slot', v_slot::text, true);
    workflow_id := set_config('shardflow.workflow_id', p_id, true);
    RETURN NEXT;
END
$$;
