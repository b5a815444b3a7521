-- Slots: the hash, ownership checks, and the shard's side of a slot move (fence, export,
-- import, own, drop) and of co-located application tables.
-- Applied (CREATE OR REPLACE) after the migrations on every `migrate`, in file name
-- order; errors carry SQLSTATEs of class SF (shardflow/infra/errors.py).

-- slot = first 4 bytes of md5(utf-8 routing key), big-endian unsigned, mod slots.
CREATE OR REPLACE FUNCTION shardflow.slot_of(p_key text, p_slots integer)
RETURNS integer LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ((('x' || substr(md5(p_key), 1, 8))::bit(32)::bigint) % p_slots)::integer
$$;

CREATE OR REPLACE FUNCTION shardflow.slot_count()
RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT value::integer FROM shardflow.settings WHERE key = 'slots'), 1024)
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
    v_ids text[];
    v_priorities integer[];
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
    )
    SELECT count(*), array_agg(live.id) FILTER (WHERE live.status = 'pending'),
           array_agg(live.priority) FILTER (WHERE live.status = 'pending')
    INTO v_count, v_ids, v_priorities FROM live;
    -- Its own statement: Citus cannot plan an INSERT in a CTE (docs/citus.md).
    INSERT INTO shardflow.ready (workflow_id, slot, priority)
    SELECT i.id, p_slot, i.priority FROM unnest(v_ids, v_priorities) AS i(id, priority)
    ON CONFLICT (workflow_id) DO NOTHING;
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
        -- the directory rows of IDs whose home is this slot: with the live copy
        'directory', (SELECT coalesce(json_agg(d), '[]') FROM shardflow.directory d
                      WHERE NOT p_finished AND d.slot = p_slot),
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
    INSERT INTO shardflow.directory
    SELECT * FROM jsonb_populate_recordset(NULL::shardflow.directory,
                                           coalesce(p_data -> 'directory', '[]'))
    ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS v_n = ROW_COUNT; v_rows := v_rows + v_n;
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
    DELETE FROM shardflow.directory WHERE slot = p_slot;
    FOR r IN SELECT table_name, slot_column FROM shardflow.colocated LOOP
        EXECUTE format('DELETE FROM %s WHERE %I = $1', r.table_name::regclass, r.slot_column)
            USING p_slot;
        GET DIAGNOSTICS v_n = ROW_COUNT; v_rows := v_rows + v_n;
    END LOOP;
    -- Kept as 'gone': a shard drained of every slot is not a standalone shard (see 0019).
    UPDATE shardflow.slots SET state = 'gone' WHERE slot = p_slot;
    -- Routers waiting here for a workflow of the slot read its outcome back, find it gone
    -- and follow it to the slot's new shard (at once, not at their next periodic check).
    IF cardinality(v_ids) > 0 THEN
        PERFORM pg_notify('shardflow_done', '');
    END IF;
    RETURN v_rows;
END
$$;

-- The leading coordinator's term, as this shard last heard it. Every move call carries its
-- caller's term (the named queries slot_*), and one older than a term already heard is
-- refused (SF007): a leader that stalled and woke after a successor took over changes
-- nothing here. Locks the row, so two leaders' calls are ordered.
CREATE OR REPLACE FUNCTION shardflow.check_term(p_term bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_seen bigint;
BEGIN
    INSERT INTO shardflow.settings AS s (key, value) VALUES ('leader_term', p_term::text)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
        WHERE s.value::bigint < excluded.value::bigint;
    SELECT s.value::bigint INTO v_seen FROM shardflow.settings s WHERE s.key = 'leader_term';
    IF v_seen > p_term THEN
        RAISE EXCEPTION USING ERRCODE = 'SF007', MESSAGE = format(
            'leader term %s is stale: term %s has taken over', p_term, v_seen);
    END IF;
    RETURN true;
END
$$;
