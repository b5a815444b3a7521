-- 0005: children by parent, so cancelling a parent finds its children without a scan.
CREATE INDEX workflows_parent ON shardflow.workflows (parent) WHERE parent IS NOT NULL;
