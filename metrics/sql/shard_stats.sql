-- What the coordinator reads from each shard for the cluster's metrics (Postgres 15).

-- name: queue_depth
-- Each count reads a partial index, never the table (these run every few seconds).
SELECT 'running' AS status, count(*)::bigint AS n
FROM shardflow.workflows WHERE status = 'running'
UNION ALL
SELECT status, count(*)::bigint FROM shardflow.workflows
WHERE status IN ('sleeping', 'waiting') GROUP BY status;

-- name: ready_now
SELECT count(*)::bigint AS n,
       coalesce(extract(epoch FROM now() - min(run_at)), 0)::float8 AS oldest_s
FROM shardflow.ready WHERE run_at <= now();

-- name: lock_waits
SELECT l.locktype, count(*)::bigint AS n
FROM pg_locks l WHERE NOT l.granted GROUP BY l.locktype;

-- name: longest_lock_wait
SELECT coalesce(max(extract(epoch FROM now() - a.state_change)), 0)::float8
FROM pg_stat_activity a WHERE a.wait_event_type = 'Lock';

-- name: database_stats
SELECT deadlocks::bigint, xact_commit::bigint, xact_rollback::bigint
FROM pg_stat_database WHERE datname = current_database();

-- name: dead_tuples
SELECT relname, n_dead_tup::bigint AS n FROM pg_stat_user_tables
WHERE relname IN ('workflows', 'steps', 'ready', 'events')
  -- the shard's schema (not always named shardflow: see shard/pool.py)
  AND schemaname = (SELECT t.typnamespace::regnamespace::text FROM pg_type t
                    WHERE t.oid = pg_typeof(NULL::shardflow.workflows));

-- name: oldest_transaction
SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8
FROM pg_stat_activity WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid();
