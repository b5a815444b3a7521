-- 0002: leader term (fencing a stalled ex-leader) and the persisted slot moves.
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
