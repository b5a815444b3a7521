-- Named queries on the catalog.

-- name: setting_get
SELECT value FROM catalog.settings WHERE key = $1;

-- name: settings_init
INSERT INTO catalog.settings (key, value) VALUES ('slots', $1::text), ('map_version', '1')
ON CONFLICT (key) DO NOTHING;

-- name: map_version_bump
UPDATE catalog.settings SET value = (value::bigint + 1)::text WHERE key = 'map_version'
RETURNING value::bigint;

-- name: shard_add
INSERT INTO catalog.shards (id, dsn) VALUES ($1, $2);

-- name: shard_list
SELECT id, dsn, state, checked_at FROM catalog.shards ORDER BY id;

-- name: slots_assign
-- Point slots at a shard with a new epoch each.
INSERT INTO catalog.slots (slot, shard_id, epoch)
SELECT s, $2, 1 FROM unnest($1::integer[]) AS s
ON CONFLICT (slot) DO UPDATE SET shard_id = excluded.shard_id, epoch = catalog.slots.epoch + 1
RETURNING slot, epoch;

-- name: slot_map
SELECT (SELECT value::bigint FROM catalog.settings WHERE key = 'map_version') AS version,
       coalesce(array_agg(shard_id ORDER BY slot), '{}') AS owners
FROM catalog.slots;

-- name: map_version
SELECT value::bigint FROM catalog.settings WHERE key = 'map_version';

-- name: registry_add
INSERT INTO catalog.registry (name, version, shard_id)
SELECT n, v, $3 FROM unnest($1::text[], $2::text[]) AS t(n, v)
ON CONFLICT (name, version, shard_id) DO NOTHING;

-- name: registry_list
SELECT name, array_agg(DISTINCT version) AS versions, array_agg(DISTINCT shard_id) AS shards
FROM catalog.registry GROUP BY name ORDER BY name;

-- name: shard_set_dsn
UPDATE catalog.shards SET dsn = $2 WHERE id = $1;

-- name: registry_shards
SELECT DISTINCT shard_id FROM catalog.registry;

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = $1;

-- name: leader_take
-- A new leader: the next term, recorded with its owner, the backend of its lock session
-- ($2) and a lease of $3 seconds.
UPDATE catalog.leader
SET term = term + 1, owner = $1, since = now(), pid = $2,
    lease_until = now() + make_interval(secs => $3)
WHERE id = 1
RETURNING term;

-- name: leader_renew
-- The leader of term $1 extends its lease by $2 seconds; no row: the term moved on.
UPDATE catalog.leader SET lease_until = now() + make_interval(secs => $2)
WHERE id = 1 AND term = $1
RETURNING term;

-- name: leader_evict
-- A standby ends the session of a leader whose lease ran out while it still holds the
-- lock (a stalled process): the lock goes with the session. True when one was ended.
SELECT coalesce(bool_or(pg_terminate_backend(l.pid)), false)
FROM catalog.leader c
JOIN pg_locks l ON l.pid = c.pid AND l.locktype = 'advisory' AND l.granted
               AND l.objid = (7358201949 % 4294967296)::oid
WHERE c.id = 1 AND c.lease_until < now();

-- name: leader_get
-- expired: the lease ran out more than 5 s ago (a standby would have taken over by then).
SELECT term, owner, since, lease_until,
       coalesce(lease_until < now() - interval '5 seconds', true) AS expired
FROM catalog.leader WHERE id = 1;

-- name: leader_try_lock
SELECT pg_try_advisory_lock(7358201949);

-- name: moves_live
SELECT id, slot, source, target, phase, epoch, precopy_before, fenced_at, rows_copied,
       pause_ms, error
FROM catalog.moves WHERE phase NOT IN ('done', 'rolled_back') ORDER BY id;

-- name: moves_recent
SELECT id, slot, source, target, phase, rows_copied, pause_ms, error, created_at, finished_at
FROM catalog.moves ORDER BY id DESC LIMIT $1;

-- name: moves_plan
INSERT INTO catalog.moves (slot, source, target)
SELECT * FROM unnest($1::integer[], $2::text[], $3::text[]);

-- name: move_advance
-- Move $1 from phase $2 to $3 under leader term $4; nothing happens for a stale term.
WITH l AS (SELECT term FROM catalog.leader WHERE id = 1 FOR SHARE)
UPDATE catalog.moves m
SET phase = $3, updated_at = now(),
    epoch = coalesce($5, m.epoch),
    precopy_before = coalesce($6, m.precopy_before),
    fenced_at = coalesce($7, m.fenced_at),
    rows_copied = m.rows_copied + coalesce($8, 0),
    pause_ms = coalesce($9, m.pause_ms),
    error = $10,
    finished_at = CASE WHEN $3 IN ('done', 'rolled_back') THEN now() END
WHERE m.id = $1 AND m.phase = $2 AND (SELECT term FROM l) = $4
RETURNING m.id;

-- name: move_note_error
UPDATE catalog.moves SET error = $2, updated_at = now() WHERE id = $1;

-- name: slot_flip
-- The catalog points the slot at the target with the move's epoch and bumps the map
-- version, in one statement, under the leader's term.
WITH l AS (SELECT term FROM catalog.leader WHERE id = 1 FOR SHARE),
f AS (
    UPDATE catalog.slots SET shard_id = $2, epoch = $4
    WHERE slot = $1 AND shard_id = $3 AND (SELECT term FROM l) = $5
    RETURNING slot
), v AS (
    UPDATE catalog.settings SET value = (value::bigint + 1)::text
    WHERE key = 'map_version' AND EXISTS (SELECT 1 FROM f)
)
SELECT slot FROM f;

-- name: slot_epoch
SELECT shard_id, epoch FROM catalog.slots WHERE slot = $1;

-- name: shard_set_state
UPDATE catalog.shards SET state = $2, checked_at = now() WHERE id = $1 AND state <> $2
RETURNING id;

-- name: shard_checked
UPDATE catalog.shards SET checked_at = now() WHERE id = $1;

-- name: shard_remove
DELETE FROM catalog.shards s WHERE s.id = $1
  AND NOT EXISTS (SELECT 1 FROM catalog.slots WHERE shard_id = s.id)
  AND NOT EXISTS (SELECT 1 FROM catalog.moves m WHERE (m.source = s.id OR m.target = s.id)
                  AND m.phase NOT IN ('done', 'rolled_back'))
RETURNING id;

-- name: registry_remove_shard
DELETE FROM catalog.registry WHERE shard_id = $1;

-- name: moves_forget_shard
-- The finished moves of a shard being removed (history only).
DELETE FROM catalog.moves
WHERE (source = $1 OR target = $1) AND phase IN ('done', 'rolled_back');

-- name: move_set_horizon
-- The pre-copy horizon is fixed once per move: a resumed pre-copy reuses it, so the
-- pre-copy and the live copy always split the slot's rows at the same moment.
UPDATE catalog.moves SET precopy_before = coalesce(precopy_before, $2) WHERE id = $1
RETURNING precopy_before;

-- name: schedule_create
-- A schedule made through the API; NULL when the name is taken.
INSERT INTO catalog.schedules (name, workflow, cron, timezone, overlap, input, next_tick)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
ON CONFLICT (name) DO NOTHING
RETURNING name;

-- name: schedule_declare
-- A schedule declared in code (@workflow(schedule=...)), by every executor at start:
-- the same expression keeps its place; a changed one starts from its next tick.
INSERT INTO catalog.schedules (name, workflow, cron, timezone, overlap, source, next_tick)
VALUES ($1, $1, $2, $3, $4, 'code', $5)
ON CONFLICT (name) DO UPDATE
SET cron = excluded.cron, timezone = excluded.timezone, overlap = excluded.overlap,
    next_tick = CASE WHEN (schedules.cron, schedules.timezone)
                          IS DISTINCT FROM (excluded.cron, excluded.timezone)
                     THEN excluded.next_tick ELSE schedules.next_tick END
WHERE schedules.source = 'code';

-- name: schedule_list
SELECT name, workflow, cron, timezone, overlap, input::text AS input, source, next_tick,
       last_tick, last_workflow, fired, skipped, created_at
FROM catalog.schedules ORDER BY name;

-- name: schedule_get
SELECT name, workflow, cron, timezone, overlap, input::text AS input, source, next_tick,
       last_tick, last_workflow, fired, skipped, created_at
FROM catalog.schedules WHERE name = $1;

-- name: schedule_delete
DELETE FROM catalog.schedules WHERE name = $1 RETURNING name;

-- name: schedules_due
SELECT name, workflow, cron, timezone, overlap, input::text AS input, next_tick,
       last_workflow, now() AS now
FROM catalog.schedules WHERE next_tick <= now() ORDER BY next_tick LIMIT $1;

-- name: schedule_advance
-- Move past a tick, only if nobody did already (compare-and-set on next_tick).
UPDATE catalog.schedules
SET next_tick = $3, last_tick = $4, last_workflow = coalesce($5, last_workflow),
    fired = fired + (CASE WHEN $5::text IS NULL THEN 0 ELSE 1 END),
    skipped = skipped + (CASE WHEN $5::text IS NULL THEN 1 ELSE 0 END)
WHERE name = $1 AND next_tick = $2;

-- name: limit_set
INSERT INTO catalog.limits (name, max_running) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET max_running = excluded.max_running;

-- name: limit_clear
DELETE FROM catalog.limits WHERE name = $1;

-- name: limit_list
SELECT name, max_running FROM catalog.limits ORDER BY name;

-- name: limit_shares
-- The share of each limit each shard was last given (what an unreachable one may run).
SELECT name, shard, share FROM catalog.limit_shares;

-- name: limit_share_record
INSERT INTO catalog.limit_shares (name, shard, share) VALUES ($1, $2, $3)
ON CONFLICT (name, shard) DO UPDATE SET share = excluded.share;

-- name: limit_shares_forget_shard
DELETE FROM catalog.limit_shares WHERE shard = $1;
