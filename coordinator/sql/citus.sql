-- Citus backend (coordinator/citus.py): each Shardflow shard is one distributed schema
-- of one Citus database (schema-based sharding, Citus >= 12). Citus places each schema
-- on a worker and moves it whole when it rebalances.

-- name: extension
CREATE EXTENSION IF NOT EXISTS citus;

-- name: schema_sharding_on
SET citus.enable_schema_based_sharding TO on;

-- name: schema_sharding_off
SET citus.enable_schema_based_sharding TO off;

-- name: coordinator_host
SELECT citus_set_coordinator_host($1, $2);

-- name: add_worker
SELECT citus_add_node($1, $2)
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_node WHERE nodename = $1 AND nodeport = $2);

-- name: schema_exists
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1);

-- name: schema_distributed
SELECT EXISTS (SELECT 1 FROM pg_dist_schema WHERE schemaid::regnamespace::text = $1);

-- name: schema_distribute
SELECT citus_schema_distribute($1::regnamespace);

-- name: rebalance_start
SELECT citus_rebalance_start();
