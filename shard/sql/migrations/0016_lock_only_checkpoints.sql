-- 0016: a checkpoint flush of a running workflow's plain steps locks its row instead of
-- rewriting it (the flush queries, shardflow.flush_one), so the row's next_seq and
-- updated_at no longer move with each step; claims, cancels, retries and the status
-- document read them with the step rows (claim_workflows, shardflow.resume_seq and
-- workflow_status in functions.sql, which every migrate applies after the migrations).
-- This version marks a shard that has them: an executor of this code refuses a shard
-- below it (its claims would not see the steps it checkpointed). Executors of the code
-- before keep working on a migrated shard until they restart (they rewrite the row,
-- which the new readers accept).
SELECT 1;
