-- 0015: a slot move's export writes json text rather than building jsonb (export_slot in
-- functions.sql, which every migrate applies after the migrations). Its result type
-- changes, which CREATE OR REPLACE cannot do, so the old function goes first.
-- Coordinators of the code before keep working on a migrated shard: they read the
-- export as text either way and send it to import_slot as jsonb, as before.
DROP FUNCTION IF EXISTS shardflow.export_slot(integer, timestamptz, boolean);
