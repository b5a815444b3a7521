-- 0011: hand-off at start. An executor that takes hand-offs lists the kinds it runs
-- (name@version) and keeps handoff_until a moment ahead while it has room; a start
-- leases a new workflow of such a kind to one of them at once and tells it by NOTIFY,
-- instead of queueing it for a claim (shardflow.start_workflows).
ALTER TABLE shardflow.executors ADD COLUMN kinds text[];
ALTER TABLE shardflow.executors ADD COLUMN handoff_until timestamptz;
