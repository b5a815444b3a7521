-- 0014: executors of this code flush a single plain record with shardflow.flush_one, and
-- start_workflows hands a lone start to shardflow.start_one; both are created by
-- functions.sql, which every migrate applies after the migrations. This version marks a
-- shard that has them: an executor that needs them refuses a shard still below it with
-- the "run shardflow cluster migrate" message, instead of failing every flush. Executors
-- of the code before keep working on a migrated shard until they restart (the batch
-- statements they use are unchanged); restarted, they refuse it as newer than they know.
SELECT 1;
