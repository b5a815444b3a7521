-- 0004: cluster-wide concurrency limits per workflow name (declared in code, registered by
-- executors); the leading coordinator shares each out among the shards.
CREATE TABLE catalog.limits (
    name text PRIMARY KEY,
    max_running integer NOT NULL CONSTRAINT limits_max_running_check CHECK (max_running > 0)
);
