-- 0017: durable step retries. A failed attempt that will be retried is recorded as a step
-- row with status 'retrying' (attempts so far, the last error, and in output the time of
-- the next attempt), so a crash does not reset the count and a long backoff is a durable
-- timer; the attempt that ends the step replaces the row (the inserts of the flushes and
-- of a transactional step update a 'retrying' row on conflict).
ALTER TABLE shardflow.steps DROP CONSTRAINT steps_status_check;
ALTER TABLE shardflow.steps ADD CONSTRAINT steps_status_check
    CHECK (status IN ('completed', 'failed', 'retrying'));
