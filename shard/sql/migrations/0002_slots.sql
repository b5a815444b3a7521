-- 0002: the slots this shard owns, with their epochs (set by the catalog).
-- With no rows the shard is standalone and owns every slot.
CREATE TABLE shardflow.slots (
    slot integer PRIMARY KEY,
    epoch bigint NOT NULL,
    state text NOT NULL DEFAULT 'owned',
    CONSTRAINT slots_state_check CHECK (state IN ('owned', 'moving'))
);
