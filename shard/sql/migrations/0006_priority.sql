-- 0006: workflow priorities honoured (higher first, -1000..1000, default 0). Every ready
-- entry carries its workflow's priority; the claim (shardflow.claimable) takes positive
-- priorities first, then 0 by run_at (the old index), then negative ones, through this
-- partial index. start_workflows gains a priorities argument.
ALTER TABLE shardflow.workflows
    ADD CONSTRAINT workflows_priority_check CHECK (priority BETWEEN -1000 AND 1000);
CREATE INDEX ready_prioritized ON shardflow.ready (priority DESC, run_at) WHERE priority <> 0;
DROP FUNCTION IF EXISTS shardflow.start_workflows(
    text[], text[], jsonb[], text[], text[], double precision[]);
