-- Where a shard schema lives on Citus (shardflow/infra/placement.py). Every Citus node
-- holds the metadata, so any node answers.

-- name: citus
SELECT to_regclass('pg_catalog.pg_dist_node') IS NOT NULL;

-- name: schema_node
-- The node holding the schema's tables (one group: the schema's co-located shards).
SELECT n.nodename, n.nodeport
FROM pg_dist_shard s
JOIN pg_dist_placement p ON p.shardid = s.shardid
JOIN pg_dist_node n ON n.groupid = p.groupid
WHERE s.logicalrelid = to_regclass(quote_ident($1) || '.workflows')
  AND n.noderole = 'primary' AND n.isactive
LIMIT 1;
