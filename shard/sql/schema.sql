-- Shardflow shard schema: the state of every workflow owned by this shard.
-- This file is the reference; shard/sql/migrations/*.sql must produce exactly it
-- (checked by tests/test_schema.py). Hot tables get a low fillfactor and
-- frequent autovacuum so their many updates stay HOT and bloat stays small (workflows
-- after 5,000 dead rows: each of its vacuums stalls the load; see migration 0013), and
-- a rare analyze (their queries probe keys; see migration 0010).

CREATE SCHEMA IF NOT EXISTS shardflow;

-- Cluster-level settings copied onto the shard (slot count, fixed at creation).
CREATE TABLE shardflow.settings (
    key text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO shardflow.settings (key, value) VALUES ('slots', '1024');

-- Workflow names and versions the shard's executors can run (filled at executor start).
CREATE TABLE shardflow.registry (
    name text NOT NULL,
    version text NOT NULL,
    timeout_s double precision,
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- Live executors: liveness is one advisory lock (lock_key) held by the executor's
-- connection, plus a lease renewed by its heartbeat for a stalled but alive process.
-- kinds (name@version), handoff_until and handoff_room: an executor that takes workflows
-- handed off at their start (shardflow.start_workflows), while handoff_until is ahead,
-- picked in proportion to its room (more workflows it can take; NULL counts as one).
CREATE TABLE shardflow.executors (
    owner text PRIMARY KEY,
    lock_key bigint NOT NULL,
    lease_until timestamptz NOT NULL,
    host text NOT NULL DEFAULT '',
    pid integer NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    kinds text[],
    handoff_until timestamptz,
    handoff_room integer,
    -- 'system identifier@start time' of the server holding the lock (migration 0020)
    lock_server text
);

-- One row per workflow instance (the wide row; never scanned by the claim loop).
CREATE TABLE shardflow.workflows (
    id text PRIMARY KEY,
    slot integer NOT NULL,
    routing_key text NOT NULL,
    name text NOT NULL,
    version text NOT NULL,
    status text NOT NULL,
    input jsonb NOT NULL,
    output jsonb,
    error jsonb,
    attempt integer NOT NULL DEFAULT 0,
    next_seq integer NOT NULL DEFAULT 0,
    signal_seq integer NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    priority integer NOT NULL DEFAULT 0,
    wake_at timestamptz,
    deadline timestamptz,
    lease_owner text,
    lease_epoch bigint NOT NULL DEFAULT 0,
    lease_until timestamptz,
    parent text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    traceparent text,  -- W3C trace context of the start (migration 0021)
    CONSTRAINT workflows_status_check CHECK (status IN
        ('pending', 'running', 'sleeping', 'waiting', 'completed', 'failed', 'cancelled')),
    CONSTRAINT workflows_priority_check CHECK (priority BETWEEN -1000 AND 1000)
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02,
        autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_threshold = 100000,
        autovacuum_analyze_scale_factor = 1.0, autovacuum_vacuum_threshold = 5000);
CREATE INDEX workflows_running_owner ON shardflow.workflows (lease_owner)
    WHERE status = 'running';
CREATE INDEX workflows_finished_at ON shardflow.workflows (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX workflows_created_at ON shardflow.workflows (created_at, id);
CREATE INDEX workflows_slot ON shardflow.workflows (slot);
CREATE INDEX workflows_suspended ON shardflow.workflows (status)
    WHERE status IN ('sleeping', 'waiting');
CREATE INDEX workflows_parent ON shardflow.workflows (parent) WHERE parent IS NOT NULL;

-- Step checkpoints: one row per completed (or finally failed) step, timer or
-- recorded value, keyed by the position (seq) of the call in the workflow's code.
CREATE TABLE shardflow.steps (
    workflow_id text NOT NULL,
    seq integer NOT NULL,
    name text NOT NULL,
    status text NOT NULL,
    output jsonb,
    error jsonb,
    attempts integer NOT NULL DEFAULT 1,
    started_at timestamptz,
    finished_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, seq),
    CONSTRAINT steps_status_check CHECK (status IN ('completed', 'failed', 'retrying'))
) WITH (autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_threshold = 100000,
        autovacuum_analyze_scale_factor = 1.0);

-- Events sent to workflows (human in the loop); the k-th wait for a name
-- consumes the k-th event of that name. dedup_id delivers an event once.
CREATE TABLE shardflow.events (
    id bigserial PRIMARY KEY,
    workflow_id text NOT NULL,
    name text NOT NULL,
    payload jsonb,
    dedup_id text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_workflow ON shardflow.events (workflow_id, name, id);
CREATE UNIQUE INDEX events_dedup ON shardflow.events (workflow_id, name, dedup_id)
    WHERE dedup_id IS NOT NULL;

-- Workflows defined in SQL (shardflow.define_workflow): each version of a definition
-- is kept, so an instance replays with the definition it started with.
CREATE TABLE shardflow.sql_workflows (
    name text NOT NULL,
    version text NOT NULL,
    definition jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- Concurrency limits per workflow name: at most per_shard instances running at once
-- on this shard, and at most cluster across the cluster (this shard's part of it, share,
-- is set by the leading coordinator; a standalone shard takes the whole of it).
CREATE TABLE shardflow.limits (
    name text PRIMARY KEY,
    per_shard integer CONSTRAINT limits_per_shard_check CHECK (per_shard > 0),
    cluster integer CONSTRAINT limits_cluster_check CHECK (cluster > 0),
    share integer CONSTRAINT limits_share_check CHECK (share >= 0)
);
CREATE INDEX workflows_running_name ON shardflow.workflows (name) WHERE status = 'running';

-- The narrow hot queue executors claim from: one row per runnable or scheduled
-- (timer) workflow; a row is deleted by the claim that takes it.
CREATE TABLE shardflow.ready (
    workflow_id text PRIMARY KEY,
    slot integer NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0,
        autovacuum_analyze_threshold = 100000, autovacuum_analyze_scale_factor = 1.0);
CREATE INDEX ready_run_at ON shardflow.ready (run_at);
-- Non-zero priorities, claimed before (positive) or after (negative) the rest.
CREATE INDEX ready_prioritized ON shardflow.ready (priority DESC, run_at) WHERE priority <> 0;

-- The slots this shard owns, with their epochs (set by the catalog).
-- With no rows the shard is standalone and owns every slot.
CREATE TABLE shardflow.slots (
    slot integer PRIMARY KEY,
    epoch bigint NOT NULL,
    state text NOT NULL DEFAULT 'owned',
    CONSTRAINT slots_state_check CHECK (state IN ('owned', 'moving', 'incoming', 'gone'))
);

-- Each slot-move copy applied on this shard, so a retried copy never doubles rows.
CREATE TABLE shardflow.moves_in (
    move_id bigint NOT NULL,
    phase text NOT NULL,
    slot integer NOT NULL,
    rows_copied bigint NOT NULL DEFAULT 0,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (move_id, phase)
);

-- Application tables whose rows move with their slot (shardflow.colocate()).
CREATE TABLE shardflow.colocated (
    table_name text PRIMARY KEY,
    slot_column text NOT NULL
);

-- Where a workflow placed by a routing key other than its ID lives: one row on the ID's
-- home shard (slot_of(id)); it keeps the ID unique across the cluster.
CREATE TABLE shardflow.directory (
    id text PRIMARY KEY,
    slot integer NOT NULL,
    routing_key text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX directory_slot ON shardflow.directory (slot);
CREATE INDEX directory_created ON shardflow.directory (created_at);
