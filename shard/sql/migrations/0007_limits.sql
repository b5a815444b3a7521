-- 0007: concurrency limits per workflow name: at most per_shard instances running at once
-- on this shard, and at most cluster across the cluster (this shard's part of it, share,
-- is set by the leading coordinator; a standalone shard takes the whole of it).
CREATE TABLE shardflow.limits (
    name text PRIMARY KEY,
    per_shard integer CONSTRAINT limits_per_shard_check CHECK (per_shard > 0),
    cluster integer CONSTRAINT limits_cluster_check CHECK (cluster > 0),
    share integer CONSTRAINT limits_share_check CHECK (share >= 0)
);
CREATE INDEX workflows_running_name ON shardflow.workflows (name) WHERE status = 'running';
