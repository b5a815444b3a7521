-- Claims: the batched claim and what it may take (kinds, limits, priorities), and the
-- reclaim of a dead executor's leases.
-- Applied (CREATE OR REPLACE) after the migrations on every `migrate`, in file name
-- order; errors carry SQLSTATEs of class SF (shardflow/infra/errors.py).

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
-- cheaper than the generic one, so Postgres planned them again on every claim; the
-- generic plans probe the same indexes.
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
                  -- (shardflow.of_kinds and shardflow.named, written out: Citus cannot
                  -- run a function that reads a table from inside a query on a shard)
                  AND (p_names IS NULL OR EXISTS (
                      SELECT 1 FROM shardflow.workflows k
                      WHERE k.id = q.workflow_id
                        AND (k.name, k.version) IN (SELECT * FROM unnest(p_names, p_versions))))
                  AND (v_full IS NULL OR NOT EXISTS (
                      SELECT 1 FROM shardflow.workflows k
                      WHERE k.id = q.workflow_id AND k.name = ANY (v_full)))
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
                  -- (shardflow.of_kinds and shardflow.named, written out: Citus cannot
                  -- run a function that reads a table from inside a query on a shard)
                  AND (p_names IS NULL OR EXISTS (
                      SELECT 1 FROM shardflow.workflows k
                      WHERE k.id = q.workflow_id
                        AND (k.name, k.version) IN (SELECT * FROM unnest(p_names, p_versions))))
                  AND (v_full IS NULL OR NOT EXISTS (
                      SELECT 1 FROM shardflow.workflows k
                      WHERE k.id = q.workflow_id AND k.name = ANY (v_full)))
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
               routing_key text, parent text, priority integer, traceparent text)
LANGUAGE plpgsql AS $$
BEGIN
    -- Nothing due (every poll of an idle shard, and of a busy one whose starts are handed
    -- off): one probe of the run_at index instead of the bands of claimable (ten polls
    -- a second per executor). min(), not an EXISTS over
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
              w.deadline, w.created_at, w.routing_key, w.parent, w.priority, w.traceparent;
END
$$;

-- The server this runs on, in one life of it: 'system identifier@start time'.
CREATE OR REPLACE FUNCTION shardflow.lock_server() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT (SELECT system_identifier FROM pg_control_system())::text || '@'
           || pg_postmaster_start_time()::text
$$;

-- Take back the workflows of executors that are gone (their advisory lock is free)
-- or stalled (their lease expired): new lease epoch, back to the ready queue, or
-- failed once a workflow has crashed its executors more than p_max_attempts times.
CREATE OR REPLACE FUNCTION shardflow.reclaim_dead(p_me text, p_max_attempts integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_here text := shardflow.lock_server();
    v_now timestamptz;
    v_ids text[];
    v_slots integer[];
    v_priorities integer[];
    v_dead text[] := '{}';
    v_count integer;
    v_parents text[];
BEGIN
    -- A lock is tested only on the server holding it; one held in an earlier life of
    -- this server is gone (lock_server, migration 0020).
    FOR r IN SELECT e.owner, e.lock_key, e.lease_until < now() AS expired,
                    coalesce(e.lock_server = v_here, true) AS here,
                    split_part(e.lock_server, '@', 1) = split_part(v_here, '@', 1)
                        AND e.lock_server <> v_here AS restarted
             FROM shardflow.executors e WHERE e.owner <> p_me LOOP
        IF r.expired OR r.restarted OR (r.here AND pg_try_advisory_xact_lock(r.lock_key)) THEN
            v_dead := v_dead || r.owner;
        END IF;
    END LOOP;
    IF cardinality(v_dead) > 0 THEN
        DELETE FROM shardflow.executors WHERE owner = ANY (v_dead);
    END IF;
    v_now := clock_timestamp();  -- a variable: Citus refuses volatile functions in an UPDATE
    WITH lost AS (
        UPDATE shardflow.workflows w
        SET attempt = w.attempt + 1, lease_epoch = w.lease_epoch + 1,
            lease_owner = NULL, lease_until = NULL, updated_at = now(),
            -- Past the limit, the next run replays to its first new call and fails there
            -- with its compensations (shard/runner.py); if even that run is lost, it is
            -- failed here, its compensations unrun.
            status = CASE WHEN w.attempt + 1 > p_max_attempts + 1 THEN 'failed' ELSE 'pending' END,
            -- Built of immutable parts: Citus refuses stable functions (format,
            -- jsonb_build_object) in a CASE of an UPDATE.
            error = CASE WHEN w.attempt + 1 > p_max_attempts + 1 THEN (
                '{"type": "RecoveryLimitExceeded", "code": "recovery_limit", "message": '
                || '"the workflow was recovered from a lost executor '
                || (w.attempt + 1)::text || ' times (limit ' || p_max_attempts::text
                || '), its compensations too; it is failed instead of looping"}')::jsonb
                ELSE w.error END,
            finished_at = CASE WHEN w.attempt + 1 > p_max_attempts + 1 THEN v_now END
        WHERE w.status = 'running'
          AND (w.lease_owner = ANY (v_dead)
               OR NOT EXISTS (SELECT 1 FROM shardflow.executors e WHERE e.owner = w.lease_owner))
        RETURNING w.id, w.slot, w.status, w.priority, w.parent
    )
    SELECT count(*), array_agg(lost.parent) FILTER (WHERE lost.status = 'failed'
                                                      AND lost.parent IS NOT NULL),
           array_agg(lost.id) FILTER (WHERE lost.status = 'pending'),
           array_agg(lost.slot) FILTER (WHERE lost.status = 'pending'),
           array_agg(lost.priority) FILTER (WHERE lost.status = 'pending')
    INTO v_count, v_parents, v_ids, v_slots, v_priorities FROM lost;
    -- Its own statement, not a CTE of the one above: Citus cannot plan an INSERT in a CTE.
    INSERT INTO shardflow.ready (workflow_id, slot, priority)
    SELECT * FROM unnest(v_ids, v_slots, v_priorities)
    ON CONFLICT (workflow_id) DO NOTHING;
    PERFORM shardflow.signal_parent(p) FROM unnest(v_parents) AS p;
    IF v_count > 0 THEN
        PERFORM pg_notify('shardflow_ready', '');
        PERFORM pg_notify('shardflow_done', '');
    END IF;
    RETURN v_count;
END
$$;

-- workflow_release_many (shard/sql/queries.sql) on Citus, one workflow at a time (Citus
-- cannot plan its INSERT in a CTE whole: docs/citus.md).
CREATE OR REPLACE FUNCTION shardflow.release_each(p_ids text[], p_epochs bigint[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_count integer := 0;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_ids), 0) LOOP
        UPDATE shardflow.workflows w
        SET status = 'pending', lease_owner = NULL, lease_until = NULL,
            lease_epoch = w.lease_epoch + 1, updated_at = now()
        WHERE w.id = p_ids[i] AND w.lease_epoch = p_epochs[i] AND w.status = 'running'
        RETURNING w.id, w.slot, w.priority INTO r;
        CONTINUE WHEN NOT FOUND;
        INSERT INTO shardflow.ready (workflow_id, slot, priority) VALUES (r.id, r.slot, r.priority)
        ON CONFLICT (workflow_id) DO NOTHING;
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END
$$;
