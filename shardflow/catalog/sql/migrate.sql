-- Bootstrap of the migration runner for the catalog.

-- name: bootstrap
CREATE SCHEMA IF NOT EXISTS catalog;
CREATE TABLE IF NOT EXISTS catalog.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: lock
SELECT pg_advisory_xact_lock(7358201948);

-- name: applied
SELECT version FROM catalog.schema_migrations ORDER BY version;

-- name: record
INSERT INTO catalog.schema_migrations (version, name) VALUES ($1, $2);

-- name: citus
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus');
