-- The cluster catalog: shards, the slot map (slot -> shard, epoch per slot, one map
-- version), the workflow registry and cluster settings. Small; any Postgres.
-- Reference schema; shardflow/catalog/sql/migrations/*.sql must produce exactly it.

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

-- The leader's term: every move transition checks it, fencing a stalled ex-leader.
CREATE TABLE catalog.leader (
    id integer PRIMARY KEY DEFAULT 1,
    term bigint NOT NULL DEFAULT 0,
    owner text,
    since timestamptz,
    CONSTRAINT leader_single_row CHECK (id = 1)
);
INSERT INTO catalog.leader (id) VALUES (1);

CREATE TABLE catalog.moves (
    id bigserial PRIMARY KEY,
    slot integer NOT NULL,
    source text NOT NULL REFERENCES catalog.shards (id),
    target text NOT NULL REFERENCES catalog.shards (id),
    phase text NOT NULL DEFAULT 'planned',
    epoch bigint,
    precopy_before timestamptz,
    fenced_at timestamptz,
    rows_copied bigint NOT NULL DEFAULT 0,
    pause_ms double precision,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CONSTRAINT moves_phase_check CHECK (phase IN
        ('planned', 'precopied', 'fenced', 'copied', 'flipped', 'done', 'rolled_back'))
);
CREATE UNIQUE INDEX moves_one_live_per_slot ON catalog.moves (slot)
    WHERE phase NOT IN ('done', 'rolled_back');
