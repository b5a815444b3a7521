-- 0004: a small partial index so counting suspended workflows (metrics) never scans
-- the table; rows enter and leave it only when they suspend or wake.
CREATE INDEX workflows_suspended ON shardflow.workflows (status)
    WHERE status IN ('sleeping', 'waiting');
