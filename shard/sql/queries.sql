-- Named queries of the shard runtime, loaded once by shard/queries.py and called
-- by name. Every executor write is fenced on the workflow's lease epoch by a lock of the
-- workflow row (an UPDATE of it, or FOR NO KEY UPDATE when only steps are added), in the
-- same statement as the write.
-- A block named with a leading underscore is a fragment, not a query: it is pasted in
-- place of each later line "-- use: <its name>" (SQL that two statements share).

-- name: executor_register
INSERT INTO shardflow.executors (owner, lock_key, lease_until, host, pid, lock_server)
VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5, $6)
ON CONFLICT (owner) DO UPDATE SET lease_until = excluded.lease_until,
                                  lock_server = excluded.lock_server;

-- name: executor_relock
-- The executor now holds its lock on server $2 (it followed its schema to another
-- Citus node); no row means peers declared it dead.
UPDATE shardflow.executors SET lock_server = $2 WHERE owner = $1 RETURNING owner;

-- name: executor_heartbeat
-- Renew the executor's lease; no row means peers declared it dead.
UPDATE shardflow.executors SET lease_until = now() + make_interval(secs => $2)
WHERE owner = $1
RETURNING owner;

-- name: executor_handoff
-- Take hand-offs at start ($3 > 0: for the next $3 seconds, of kinds $2, with room for $4
-- more workflows) or stop ($3 = 0).
UPDATE shardflow.executors
SET kinds = $2::text[],
    -- now() outside the CASE: Citus refuses a non-immutable function inside one.
    handoff_until = now() + CASE WHEN $3 > 0 THEN make_interval(secs => $3) END,
    handoff_room = $4
WHERE owner = $1;

-- name: workflows_leased_to
-- Running workflows leased to executor $1 untouched for $2 seconds: with those it holds in
-- memory left out, hand-offs whose NOTIFY never reached it (sent from elsewhere, lost).
SELECT id, lease_epoch FROM shardflow.workflows
WHERE status = 'running' AND lease_owner = $1
  AND updated_at < now() - make_interval(secs => $2);

-- name: executor_unregister
DELETE FROM shardflow.executors WHERE owner = $1;

-- name: executor_lock
-- The session's lock, and the name of the server holding it (migration 0020).
SELECT shardflow.lock_server() FROM (SELECT pg_advisory_lock($1)) AS locked;

-- name: registry_add
INSERT INTO shardflow.registry (name, version, timeout_s)
SELECT * FROM unnest($1::text[], $2::text[], $3::double precision[])
ON CONFLICT (name, version) DO UPDATE SET timeout_s = excluded.timeout_s;

-- name: limits_set
-- The limits an executor's code declares (NULL: none) replace those of the same names.
INSERT INTO shardflow.limits AS l (name, per_shard, cluster)
SELECT * FROM unnest($1::text[], $2::integer[], $3::integer[])
ON CONFLICT (name) DO UPDATE SET per_shard = excluded.per_shard, cluster = excluded.cluster;

-- name: limits_clear
DELETE FROM shardflow.limits WHERE name = ANY ($1::text[]);

-- name: reclaim_dead
SELECT shardflow.reclaim_dead($1, $2);

-- name: workflow_claim_batch
-- Claim up to $2 due workflows for owner $1 with a lease of $3 seconds ($4/$5: the kinds).
SELECT * FROM shardflow.claim_workflows($1, $2, $3, $4::text[], $5::text[]);

-- name: steps_for_workflows
SELECT workflow_id, seq, name, status, output::text AS output, error::text AS error, attempts
FROM shardflow.steps WHERE workflow_id = ANY ($1::text[])
ORDER BY workflow_id, seq;

-- name: events_for_workflows
SELECT workflow_id, name, payload::text AS payload
FROM shardflow.events WHERE workflow_id = ANY ($1::text[])
ORDER BY workflow_id, id;

-- name: _flush_input
-- $1 is one JSON array of the workflows' records, each with its new step rows (outputs
-- and errors as JSON text, times in ISO 8601): one parameter encodes in a fraction
-- of the time 17 arrays took the driver, element by element.
WITH wf_in AS (
    SELECT t.id, t.epoch, t.status AS new_status, t.output::jsonb AS output,
           t.error::jsonb AS error, t.run_at, t.next_seq,
           t.seen_signal, t.parent, t.steps
    FROM json_to_recordset($1::json) AS t(id text, epoch bigint, status text, output text,
        error text, run_at timestamptz, next_seq integer, seen_signal integer, parent text,
        steps json)

-- name: _flush_update
        status = i.new_status,
        output = i.output,
        error = i.error,
        next_seq = greatest(w.next_seq, i.next_seq),
        wake_at = i.run_at,
        lease_owner = CASE WHEN i.new_status = 'running' THEN w.lease_owner END,
        lease_until = CASE WHEN i.new_status = 'running' THEN w.lease_until END,
        -- clock_timestamp(), not now(): the slot-move pre-copy horizon must never pass
        -- for this transaction's finish while it is still open (slot_precopy_horizon).
        -- (Not on Citus: there the flushes are shardflow.flush_each's.)
        finished_at = CASE WHEN i.new_status IN ('completed', 'failed', 'cancelled')
                           THEN clock_timestamp() END,
        updated_at = now()
    FROM wf_in i
    -- Probe the flushed IDs' keys (= ANY): with a bare w.status = 'running' the planner
    -- read the whole partial index of running workflows (thousands of entries, most of
    -- them dead between vacuums) and hash-joined it. IS TRUE keeps
    -- that index out of the plan; it is the same test.
    WHERE w.id = ANY (ARRAY(SELECT k.id FROM wf_in k))
      AND w.id = i.id AND w.lease_epoch = i.epoch AND (w.status = 'running') IS TRUE

-- name: _flush_held
    -- The rows of records still running, to lock (a record that only adds steps leaves
    -- its row as it is). A key probe per record: joined to w.id = ANY (array), as the
    -- update finds its rows, each probe sorted the array again, and a flush of 300
    -- records took four times as long as the update (docs/benchmarks.md).
    FROM wf_in i JOIN shardflow.workflows w ON w.id = i.id
    WHERE i.new_status = 'running' AND w.lease_epoch = i.epoch AND (w.status = 'running') IS TRUE

-- name: _flush_steps_and_outcomes
), st AS (
    INSERT INTO shardflow.steps (workflow_id, seq, name, status, output, error, attempts, started_at)
    SELECT i.id, s.seq, s.name, s.status, s.output::jsonb, s.error::jsonb, s.attempts,
           s.started_at
    FROM wf_in i
    CROSS JOIN LATERAL json_to_recordset(i.steps) AS s(seq integer, name text, status text,
        output text, error text, attempts integer, started_at timestamptz)
    JOIN fenced f ON f.id = i.id
    -- A step's last attempt replaces the row of its failed attempts (never another row).
    ON CONFLICT (workflow_id, seq) DO UPDATE
        SET status = excluded.status, output = excluded.output, error = excluded.error,
            attempts = excluded.attempts, finished_at = excluded.finished_at
        WHERE shardflow.steps.status = 'retrying'
), finished AS (
    SELECT o.*, sum(length(o.id) + coalesce(length(o.output), 0)
                    + coalesce(length(o.error), 0) + 40) OVER (ORDER BY o.id) / 7000 AS part
    FROM (SELECT f.id, f.status, f.output::text AS output, f.error::text AS error
          FROM fenced f WHERE f.status IN ('completed', 'failed', 'cancelled')) o
), done AS (
    -- The outcomes themselves, about 7,000 bytes per NOTIFY (a payload holds 8,000), so
    -- that waiting routers answer without reading them back; a part that does not fit
    -- goes as '', which tells listeners to read the outcomes of all they wait for.
    SELECT pg_notify('shardflow_done', CASE WHEN length(p.payload) < 7900 THEN p.payload ELSE '' END)
    FROM (SELECT json_agg(json_build_array(x.id, x.status, x.output, x.error))::text AS payload
          FROM finished x GROUP BY x.part) p

-- name: checkpoint_flush
-- Group commit: the new state of many workflows and their step rows in one
-- statement, and with it, when $3 > 0, the executor's next claim ($2 owner, $3 limit,
-- $4 lease seconds, $5/$6 kinds): one statement and one commit instead of two. Only
-- rows whose lease epoch still matches are written; the result lists them (claimed
-- false) and the claimed workflows (claimed true, the columns of ClaimedWorkflow).
-- Suspended workflows go back to the ready queue at their timer, or at once when an
-- event or a cancel arrived since the executor last looked.
-- use: _flush_input
), finished_children AS (
    -- Children finishing now signal their parent (woken if it waits for them).
    SELECT i.parent, count(*) AS n FROM wf_in i
    WHERE i.parent IS NOT NULL AND i.new_status IN ('completed', 'failed', 'cancelled')
    GROUP BY i.parent
), held AS (
    -- Still running and signalled by no child of this batch: locked, not rewritten (as in
    -- checkpoint_flush_plain).
    SELECT w.id, w.slot, w.status, i.run_at, w.signal_seq <> i.seen_signal AS signalled,
           w.cancel_requested, w.priority, w.output, w.error
-- use: _flush_held
      AND NOT EXISTS (SELECT FROM finished_children c WHERE c.parent = i.id)
    FOR NO KEY UPDATE OF w
), written AS (
    UPDATE shardflow.workflows w
    SET signal_seq = w.signal_seq + coalesce(
            (SELECT c.n FROM finished_children c WHERE c.parent = w.id), 0),
-- use: _flush_update
      AND (i.new_status <> 'running'
           OR EXISTS (SELECT FROM finished_children c WHERE c.parent = i.id))
    RETURNING w.id, w.slot, w.status, i.run_at, w.signal_seq <> i.seen_signal AS signalled,
              w.cancel_requested, w.priority, w.output, w.error
), fenced AS (
    SELECT * FROM held UNION ALL SELECT * FROM written
-- use: _flush_steps_and_outcomes
), rdy AS (
    INSERT INTO shardflow.ready (workflow_id, slot, run_at, priority)
    SELECT f.id, f.slot,
           CASE WHEN f.signalled OR f.cancel_requested THEN now() ELSE f.run_at END, f.priority
    FROM fenced f
    WHERE f.status IN ('sleeping', 'waiting')
      AND (f.run_at IS NOT NULL OR f.signalled OR f.cancel_requested)
    ON CONFLICT (workflow_id) DO UPDATE SET run_at = least(shardflow.ready.run_at, excluded.run_at)
), parent_entries AS (
    -- A claim locks a ready entry, then its workflow's row: lock the parents' entries
    -- before their rows too (the scalar subquery below runs first), or a claim of a
    -- parent and this flush can deadlock. A claim passes over a locked entry (SKIP LOCKED).
    -- (= ANY: a key probe, never a scan of the queue when no child finishes.)
    SELECT r.workflow_id FROM shardflow.ready r
    WHERE r.workflow_id = ANY (ARRAY(SELECT c.parent FROM finished_children c))
    ORDER BY r.workflow_id
    FOR UPDATE
), parents AS (
    -- Parents not in this batch (in it, the fenced UPDATE above signals them).
    UPDATE shardflow.workflows p SET signal_seq = p.signal_seq + c.n, updated_at = now()
    FROM finished_children c
    WHERE p.id = c.parent AND p.status NOT IN ('completed', 'failed', 'cancelled')
      AND NOT EXISTS (SELECT 1 FROM wf_in i WHERE i.id = c.parent)
      AND (SELECT count(*) FROM parent_entries) >= 0
    RETURNING p.id, p.slot, p.status, p.priority
), parents_ready AS (
    INSERT INTO shardflow.ready (workflow_id, slot, priority)
    SELECT p.id, p.slot, p.priority FROM parents p WHERE p.status = 'waiting'
    ON CONFLICT (workflow_id) DO UPDATE SET run_at = excluded.run_at
), woke AS (
    SELECT pg_notify('shardflow_ready', '')
    WHERE EXISTS (SELECT 1 FROM parents p WHERE p.status = 'waiting')
), claimed AS (
    -- The executor's next claim when it rides this flush ($3 > 0): the rows it leases are
    -- pending, sleeping or waiting ones, never the running ones this flush writes, and the
    -- caller sends no record here that could touch them (only plain ones: WorkflowRecord.plain).
    SELECT * FROM shardflow.claim_workflows($2, $3, $4, $5::text[], $6::text[])
)
-- Both parts have the columns of claim_workflows (a flushed row only its id and
-- cancel_requested) between claimed and notified.
SELECT false AS claimed, f.id, NULL AS name, NULL AS version, NULL AS input,
       NULL::bigint AS lease_epoch, NULL::integer AS attempt, NULL::integer AS next_seq,
       NULL::integer AS signal_seq, f.cancel_requested, NULL::timestamptz AS deadline,
       NULL::timestamptz AS created_at, NULL AS routing_key, NULL AS parent,
       NULL::integer AS priority, NULL AS traceparent,
       (SELECT count(*) FROM done) + (SELECT count(*) FROM woke) AS notified
FROM fenced f
UNION ALL
SELECT true, c.*, NULL FROM claimed c;

-- name: checkpoint_flush_plain
-- The checkpoint flush of the common case: no claim rides it and no record suspends or
-- finishes a child (WorkflowRecord.plain; ShardStore.checkpoint_flush picks it). The
-- same writes as checkpoint_flush for such records, in a statement a third the size:
-- Postgres builds every node of a plan at each execution, nodes that return nothing
-- included, and that was most of a small flush's cost (docs/benchmarks.md).
-- A record still running adds steps only: its row is locked under the fence (held), not
-- rewritten, which costs a fifth to a third less and leaves no dead row version. Its
-- next_seq and updated_at are read from its step rows instead (shardflow.resume_seq,
-- workflow_status).
-- use: _flush_input
), held AS (
    SELECT w.id, w.status, w.cancel_requested, w.output, w.error
-- use: _flush_held
    FOR NO KEY UPDATE OF w
), written AS (
    UPDATE shardflow.workflows w SET
-- use: _flush_update
      AND i.new_status <> 'running'
    RETURNING w.id, w.status, w.cancel_requested, w.output, w.error
), fenced AS (
    SELECT * FROM held UNION ALL SELECT * FROM written
-- use: _flush_steps_and_outcomes
)
SELECT f.id, f.cancel_requested, (SELECT count(*) FROM done) AS notified FROM fenced f;

-- name: checkpoint_flush_each
-- checkpoint_flush on Citus, record by record (shardflow.flush_each; the same arguments).
SELECT * FROM shardflow.flush_each($1::json, $2, $3, $4, $5::text[], $6::text[]);

-- name: checkpoint_flush_one
-- checkpoint_flush_plain for one record ($1, the same JSON array): shardflow.flush_one.
SELECT id, cancel_requested, notified FROM shardflow.flush_one($1::json);

-- name: workflow_lock_for_step
-- Fence a transactional step: lock the workflow row under the lease epoch, unless the
-- step at this position is recorded already (a commit whose answer was lost, then the
-- same run trying again: its effects must not apply twice).
-- The workflow's slot and ID are set for the transaction: app tables can default to them.
SELECT * FROM shardflow.lock_for_step($1, $2, $3);

-- name: step_insert
INSERT INTO shardflow.steps (workflow_id, seq, name, status, output, error, attempts, started_at)
VALUES ($1, $2, $3, 'completed', $4::jsonb, NULL, $5, $6)
ON CONFLICT (workflow_id, seq) DO UPDATE
    SET status = excluded.status, output = excluded.output, error = excluded.error,
        attempts = excluded.attempts, finished_at = excluded.finished_at
    WHERE shardflow.steps.status = 'retrying';

-- name: workflow_release_each
-- workflow_release_many on Citus (shardflow.release_each).
SELECT shardflow.release_each($1::text[], $2::bigint[]);

-- name: workflow_release_many
-- Give workflows back to the ready queue (shutdown, or a write whose outcome is unknown).
WITH rel AS (
    UPDATE shardflow.workflows w
    SET status = 'pending', lease_owner = NULL, lease_until = NULL,
        lease_epoch = w.lease_epoch + 1, updated_at = now()
    FROM unnest($1::text[], $2::bigint[]) AS i(id, epoch)
    WHERE w.id = i.id AND w.lease_epoch = i.epoch AND w.status = 'running'
    RETURNING w.id, w.slot, w.priority
), rdy AS (
    INSERT INTO shardflow.ready (workflow_id, slot, priority)
    SELECT rel.id, rel.slot, rel.priority FROM rel
    ON CONFLICT (workflow_id) DO NOTHING
)
SELECT count(*) FROM rel;

-- name: workflow_start_many
-- $8: partial (start the rows without a problem even when others have one); $9: W3C
-- traceparents; $10: an executor of the caller's own process (the fast path), whose
-- hand-offs come back in column handoff instead of a NOTIFY.
SELECT id, slot, status, created, conflict, problem, handoff
FROM shardflow.start_workflows($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::text[],
                               $6::double precision[], $7::integer[], $8::boolean, $9::text[],
                               $10::text);

-- name: workflow_start_recheck
-- Starts that raced with a concurrent insert of the same ID: read what won.
SELECT t.id, w.slot, w.status, false AS created,
       (w.name <> t.name OR w.input <> t.input) AS conflict, NULL::text AS problem,
       NULL::text AS handoff
FROM unnest($1::text[], $2::text[], $3::jsonb[]) AS t(id, name, input)
JOIN shardflow.workflows w ON w.id = t.id;

-- name: workflow_status
SELECT shardflow.workflow_status($1)::text;

-- name: workflow_outcomes
-- Outcomes of finished workflows among $1; unfinished ones come back with NULL output.
SELECT id, status,
       CASE WHEN status IN ('completed', 'failed', 'cancelled') THEN output::text END AS output,
       CASE WHEN status IN ('completed', 'failed', 'cancelled') THEN error::text END AS error
FROM shardflow.workflows
WHERE id = ANY ($1::text[]);

-- name: workflow_cancel
SELECT shardflow.cancel_workflow($1);

-- name: workflow_retry
SELECT shardflow.retry_workflow($1);

-- name: event_send
SELECT shardflow.send_event($1, $2, $3::jsonb, $4);

-- name: gc_delete_batch
-- Remove up to $2 workflows finished more than $1 seconds ago, with their rows; never a
-- child whose parent is unfinished (it reads the child's outcome when it wakes).
WITH doomed AS (
    SELECT c.id FROM shardflow.workflows c
    WHERE c.finished_at < now() - make_interval(secs => $1)
      AND c.status IN ('completed', 'failed', 'cancelled')
      AND NOT EXISTS (SELECT FROM shardflow.workflows p WHERE p.id = c.parent
                      AND p.status NOT IN ('completed', 'failed', 'cancelled'))
    ORDER BY c.finished_at
    LIMIT $2
    FOR UPDATE OF c SKIP LOCKED
), s AS (
    DELETE FROM shardflow.steps st USING doomed d WHERE st.workflow_id = d.id
), e AS (
    DELETE FROM shardflow.events ev USING doomed d WHERE ev.workflow_id = d.id
)
DELETE FROM shardflow.workflows w USING doomed d WHERE w.id = d.id
RETURNING w.id;

-- name: gc_try_lock
SELECT pg_try_advisory_xact_lock($1);

-- name: slots_own
-- The catalog gave this shard these slots at these epochs.
INSERT INTO shardflow.slots (slot, epoch)
SELECT * FROM unnest($1::integer[], $2::bigint[])
ON CONFLICT (slot) DO UPDATE SET epoch = excluded.epoch, state = 'owned';

-- name: settings_set_slots
UPDATE shardflow.settings SET value = $1::text WHERE key = 'slots';

-- name: _list_filters
  AND ($3::text IS NULL OR w.status = $3)
  AND ($4::text IS NULL OR w.name = $4)
  AND ($6::text IS NULL OR left(w.id, length($6)) = $6)
  AND ($7::timestamptz IS NULL OR w.created_at >= $7)
  AND ($8::timestamptz IS NULL OR w.created_at < $8)
  AND ($9::text IS NULL OR w.parent = $9)

-- name: workflow_docs
-- The status documents of a page of workflows (workflow_list), in a statement of its own:
-- called per row of a statement on the shard's tables, workflow_status would be a query
-- inside a query on a shard, which Citus refuses (docs/citus.md).
SELECT x.id, shardflow.workflow_status(x.id)::text AS doc FROM unnest($1::text[]) AS x(id);

-- name: workflow_list
-- One page of workflows after the cursor (created_at, id), oldest first, filtered by
-- status, name, ID prefix ($6), creation time ($7 <= created_at < $8) and parent ($9);
-- their documents: workflow_docs.
SELECT w.created_at, w.id
FROM shardflow.workflows w
WHERE (w.created_at, w.id) > ($1::timestamptz, $2::text)
-- use: _list_filters
ORDER BY w.created_at, w.id
LIMIT $5;

-- name: workflow_list_newest
-- The same, newest first: the page before the cursor.
SELECT w.created_at, w.id
FROM shardflow.workflows w
WHERE (w.created_at, w.id) < ($1::timestamptz, $2::text)
-- use: _list_filters
ORDER BY w.created_at DESC, w.id DESC
LIMIT $5;

-- name: workflow_counts
-- How many workflows of each status (of name $1, when given).
SELECT status, count(*)::bigint AS n FROM shardflow.workflows
WHERE ($1::text IS NULL OR name = $1)
GROUP BY status;

-- name: workflow_locate
SELECT status FROM shardflow.workflows WHERE id = $1;

-- name: ping
SELECT 1;

-- name: registry_has
SELECT 1 FROM shardflow.registry WHERE name = $1;

-- name: slot_fence
SELECT shardflow.fence_slot($1, $2) WHERE shardflow.check_term($3);

-- name: slot_export
SELECT shardflow.export_slot($1, $2, $3)::text;

-- name: slot_import
SELECT shardflow.import_slot($1, $2, $3, $4, $5::jsonb) WHERE shardflow.check_term($6);

-- name: slot_own
SELECT shardflow.own_slot($1, $2, $3) WHERE shardflow.check_term($4);

-- name: slot_drop
SELECT shardflow.drop_slot($1) WHERE shardflow.check_term($2);

-- name: leader_term
-- A new leader's term, told to a shard before it acts on the shard's moves.
SELECT shardflow.check_term($1);

-- name: slots_incoming
SELECT slot FROM shardflow.slots WHERE state = 'incoming';

-- name: schema_version
SELECT coalesce(max(version), 0) FROM shardflow.schema_migrations;

-- name: slot_precopy_horizon
-- A moment before which every transaction that is still open started. Read it in its own
-- statement, then take the export's snapshot (REPEATABLE READ): a workflow finished
-- before the horizon was then committed before that snapshot, so the pre-copy sees it,
-- and one that commits after the snapshot finished (began) after the horizon, so the
-- live copy takes it. Read inside the export's transaction instead, a flush committing
-- between that snapshot and this read would be in neither copy (it is gone from
-- pg_stat_activity, but not visible to the snapshot). Finishing writes stamp finished_at
-- with clock_timestamp(): a transaction's now() is taken a moment before
-- pg_stat_activity shows it, so a horizon read in that moment could pass over a flush
-- whose now() it postdates; the clock at the flush's UPDATE is always later.
SELECT least(now(), (SELECT min(a.xact_start) FROM pg_stat_activity a
                     WHERE a.xact_start IS NOT NULL AND a.pid <> pg_backend_pid()));

-- name: registry_kinds
SELECT name, version FROM shardflow.registry;

-- name: workflow_state
-- A workflow's status alone (NULL when unknown or collected): the scheduler's overlap check.
SELECT status FROM shardflow.workflows WHERE id = $1;

-- name: limits_demand
-- For the coordinator: per limited name, this shard's share, its running instances and
-- those queued and due.
SELECT n.name, l.share,
       (SELECT count(*) FROM shardflow.workflows w
        WHERE w.status = 'running' AND w.name = n.name)::integer AS running,
       (SELECT count(*) FROM shardflow.ready q JOIN shardflow.workflows w ON w.id = q.workflow_id
        WHERE q.run_at <= now() AND w.name = n.name)::integer AS queued
FROM unnest($1::text[]) AS n(name)
LEFT JOIN shardflow.limits l ON l.name = n.name;

-- name: limit_share_set
INSERT INTO shardflow.limits (name, cluster, share) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET cluster = excluded.cluster, share = excluded.share;

-- name: sql_workflows
-- The SQL definitions whose "name version" is not in $1 (those an executor has loaded).
SELECT name, version, definition::text AS definition FROM shardflow.sql_workflows
WHERE NOT (name || ' ' || version = ANY ($1::text[]));

-- name: define_workflow
SELECT shardflow.define_workflow($1, $2::jsonb);

-- name: directory_claim
SELECT shardflow.directory_claim($1, $2);

-- name: directory_holder
-- The routing key that placed workflow $1, when it is not the ID (NULL: no row here).
SELECT routing_key FROM shardflow.directory WHERE id = $1;

-- name: directory_move
SELECT shardflow.directory_move($1, $2, $3, $4);

-- name: directory_release
-- Forget the row of ID $1 held by routing key $2 (no workflow was found under it), once
-- it is older than $3 seconds.
DELETE FROM shardflow.directory
WHERE id = $1 AND routing_key = $2 AND created_at < now() - make_interval(secs => $3)
RETURNING id;

-- name: directory_stale
-- For the coordinator's sweep: rows older than $1 seconds (their start has had time to
-- land), oldest first, up to $2.
SELECT id, routing_key FROM shardflow.directory
WHERE created_at < now() - make_interval(secs => $1)
ORDER BY created_at LIMIT $2;

-- name: directory_forget
-- Remove the rows (ID, routing key) given pairwise, if unchanged.
DELETE FROM shardflow.directory d USING unnest($1::text[], $2::text[]) AS g(id, key)
WHERE d.id = g.id AND d.routing_key = g.key
RETURNING d.id;

-- name: workflows_present
-- Which of the IDs $1 this shard holds.
SELECT id FROM shardflow.workflows WHERE id = ANY ($1::text[]);
