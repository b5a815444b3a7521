-- 0012: load-aware hand-off. An executor open to hand-offs also says how many more
-- workflows it has room for (renewed with handoff_until); a start picks among the open
-- executors at random in proportion to that room (shardflow.start_workflows), so the
-- emptier ones get more. NULL (an executor of the code before) counts as room for one.
ALTER TABLE shardflow.executors ADD COLUMN handoff_room integer;
