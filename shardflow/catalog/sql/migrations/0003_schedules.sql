-- 0003: cron schedules, fired by the leading coordinator (see shard/cron.py).
CREATE TABLE catalog.schedules (
    name text PRIMARY KEY,
    workflow text NOT NULL,
    cron text NOT NULL,
    timezone text NOT NULL DEFAULT 'UTC',
    overlap text NOT NULL DEFAULT 'skip',
    input jsonb,
    source text NOT NULL DEFAULT 'api',
    next_tick timestamptz NOT NULL,
    last_tick timestamptz,
    last_workflow text,
    fired bigint NOT NULL DEFAULT 0,
    skipped bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_overlap_check CHECK (overlap IN ('skip', 'allow')),
    CONSTRAINT schedules_source_check CHECK (source IN ('api', 'code'))
);
CREATE INDEX schedules_next_tick ON catalog.schedules (next_tick);
