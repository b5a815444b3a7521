-- 0010: the three hot tables are analyzed rarely (after 100,000 changed rows plus their
-- own size) instead of every few seconds under load. Every query of the engine on them
-- probes a key or an index, so fresh statistics change no plan, while each analyze cost
-- a burst of CPU (about 40 ms on workflows) and made every connection re-plan its cached
-- statements on the table: the burst stalled the workflows in flight, the largest part of
-- the open-loop latency tail (docs/benchmarks.md, 2026-11-26).
ALTER TABLE shardflow.workflows SET (autovacuum_analyze_threshold = 100000,
                                     autovacuum_analyze_scale_factor = 1.0);
ALTER TABLE shardflow.steps SET (autovacuum_analyze_threshold = 100000,
                                 autovacuum_analyze_scale_factor = 1.0);
ALTER TABLE shardflow.ready SET (autovacuum_analyze_threshold = 100000,
                                 autovacuum_analyze_scale_factor = 1.0);
