-- 0013: workflows is vacuumed after 5,000 dead row versions plus 2 % of its size, not
-- after 50. Each vacuum of it costs about the same whatever it finds (it reads all eight
-- of its indexes), and stalls the workflows in flight for that long: at 200 workflows/s a
-- vacuum every 5 s made most of the open-loop tail (docs/benchmarks.md, "How often to
-- vacuum workflows"). Under full load the threshold is still crossed within autovacuum's
-- 5 s nap, so bloat stays as small as before.
ALTER TABLE shardflow.workflows SET (autovacuum_vacuum_threshold = 5000);
