-- 0020: the server an executor holds its advisory lock on: 'system identifier@start time'
-- (shardflow.lock_server()). On Citus an executor follows its schema from node to node
-- (shardflow/infra/placement.py): reclaim_dead tests a lock only on the server that
-- holds it, takes a lock held in an earlier life of its own server (a restart ended
-- it) for a death, and leaves locks held on other nodes to the lease. NULL (rows from
-- before): held here.
ALTER TABLE shardflow.executors ADD COLUMN IF NOT EXISTS lock_server text;
