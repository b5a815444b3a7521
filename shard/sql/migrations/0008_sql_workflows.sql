-- 0008: workflows defined in SQL (shardflow.define_workflow): each version of a definition
-- is kept, so an instance replays with the definition it started with.
CREATE TABLE shardflow.sql_workflows (
    name text NOT NULL,
    version text NOT NULL,
    definition jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
