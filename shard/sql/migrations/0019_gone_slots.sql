-- 0019: a slot moved away leaves a 'gone' row instead of none. A shard with no slot rows
-- at all is a standalone shard and takes every start; a shard drained of all its slots
-- must not become one (a router with an old slot map would start workflows there).
ALTER TABLE shardflow.slots DROP CONSTRAINT slots_state_check;
ALTER TABLE shardflow.slots ADD CONSTRAINT slots_state_check
    CHECK (state IN ('owned', 'moving', 'incoming', 'gone'));
