-- 0003: slot moves. A slot arriving on this shard is 'incoming' until the catalog
-- flips it; moves_in records each copy applied here, so a retried copy never doubles
-- rows; colocated lists application tables whose rows move with their slot.
ALTER TABLE shardflow.slots DROP CONSTRAINT slots_state_check;
ALTER TABLE shardflow.slots ADD CONSTRAINT slots_state_check
    CHECK (state IN ('owned', 'moving', 'incoming'));

CREATE TABLE shardflow.moves_in (
    move_id bigint NOT NULL,
    phase text NOT NULL,
    slot integer NOT NULL,
    rows_copied bigint NOT NULL DEFAULT 0,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (move_id, phase)
);

CREATE TABLE shardflow.colocated (
    table_name text PRIMARY KEY,
    slot_column text NOT NULL
);

CREATE INDEX workflows_slot ON shardflow.workflows (slot);
