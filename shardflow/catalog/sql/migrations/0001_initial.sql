-- 0001: the initial catalog schema.

CREATE SCHEMA IF NOT EXISTS catalog;

CREATE TABLE catalog.settings (
    key text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE catalog.shards (
    id text PRIMARY KEY,
    dsn text NOT NULL UNIQUE,
    state text NOT NULL DEFAULT 'active',
    added_at timestamptz NOT NULL DEFAULT now(),
    checked_at timestamptz,
    CONSTRAINT shards_state_check CHECK (state IN ('active', 'draining', 'down'))
);

CREATE TABLE catalog.slots (
    slot integer PRIMARY KEY,
    shard_id text NOT NULL REFERENCES catalog.shards (id),
    epoch bigint NOT NULL DEFAULT 1
);

CREATE TABLE catalog.registry (
    name text NOT NULL,
    version text NOT NULL,
    shard_id text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version, shard_id)
);
