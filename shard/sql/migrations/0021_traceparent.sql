-- 0021: the W3C traceparent a start came with (POST /v1/workflows, the Python clients, a
-- parent workflow's run), so that every executor run of the workflow joins the start's
-- trace (shardflow/infra/tracing.py). NULL without one: no bytes in the row beyond its
-- null bitmap. The start functions take it as a last argument, the claim returns it as a
-- last column: their old signatures go (CREATE OR REPLACE cannot change a result type,
-- and a default argument next to the old signature would make calls ambiguous).
ALTER TABLE shardflow.workflows ADD COLUMN IF NOT EXISTS traceparent text;
DROP FUNCTION IF EXISTS shardflow.start_workflows(
    text[], text[], jsonb[], text[], text[], double precision[], integer[], boolean);
DROP FUNCTION IF EXISTS shardflow.start_one(
    text, text, jsonb, text, text, double precision, integer, integer);
DROP FUNCTION IF EXISTS shardflow.start_each(
    text[], text[], jsonb[], text[], text[], double precision[], integer[], boolean, integer);
DROP FUNCTION IF EXISTS shardflow.handoff_item(
    text, text, text, jsonb, double precision, text, text, integer);
DROP FUNCTION IF EXISTS shardflow.claim_workflows(text, integer, double precision, text[], text[]);
DROP FUNCTION IF EXISTS shardflow.flush_each(json, text, integer, double precision, text[], text[]);
