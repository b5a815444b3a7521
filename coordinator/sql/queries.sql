-- Named queries on the catalog.

-- name: setting_get
SELECT value FROM catalog.settings WHERE key = $1;

-- name: settings_init
INSERT INTO catalog.settings (key, value) VALUES ('slots', $1::text), ('map_version', '1')
ON CONFLICT (key) DO NOTHING;

-- name: map_version_bump
UPDATE catalog.settings SET value = (value::bigint + 1)::text WHERE key = 'map_version'
RETURNING value::bigint;

-- name: shard_add
INSERT INTO catalog.shards (id, dsn) VALUES ($1, $2);

-- name: shard_list
SELECT id, dsn, state, checked_at FROM catalog.shards ORDER BY id;

-- name: slots_assign
-- Point slots at a shard with a new epoch each.
INSERT INTO catalog.slots (slot, shard_id, epoch)
SELECT s, $2, 1 FROM unnest($1::integer[]) AS s
ON CONFLICT (slot) DO UPDATE SET shard_id = excluded.shard_id, epoch = catalog.slots.epoch + 1
RETURNING slot, epoch;

-- name: slot_map
SELECT (SELECT value::bigint FROM catalog.settings WHERE key = 'map_version') AS version,
       coalesce(array_agg(shard_id ORDER BY slot), '{}') AS owners
FROM catalog.slots;

-- name: map_version
SELECT value::bigint FROM catalog.settings WHERE key = 'map_version';

-- name: registry_add
INSERT INTO catalog.registry (name, version, shard_id)
SELECT n, v, $3 FROM unnest($1::text[], $2::text[]) AS t(n, v)
ON CONFLICT (name, version, shard_id) DO NOTHING;

-- name: registry_list
SELECT name, array_agg(DISTINCT version) AS versions, array_agg(DISTINCT shard_id) AS shards
FROM catalog.registry GROUP BY name ORDER BY name;

-- name: shard_set_dsn
UPDATE catalog.shards SET dsn = $2 WHERE id = $1;

-- name: registry_shards
SELECT DISTINCT shard_id FROM catalog.registry;

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = $1;
