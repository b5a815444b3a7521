-- 0022: the fast path (DESIGN.md): a start can name an executor of the process that makes
-- it (p_prefer, a router running executors in-process). Such a start is leased to that
-- executor when it can take it, and its hand-off comes back in the start's answer
-- (column handoff) instead of a NOTIFY: nothing listens between the two. The start
-- functions' old signatures go, as in 0021.
DROP FUNCTION IF EXISTS shardflow.start_workflows(
    text[], text[], jsonb[], text[], text[], double precision[], integer[], boolean, text[]);
DROP FUNCTION IF EXISTS shardflow.start_one(
    text, text, jsonb, text, text, double precision, integer, integer, text);
DROP FUNCTION IF EXISTS shardflow.start_each(
    text[], text[], jsonb[], text[], text[], double precision[], integer[], boolean, integer,
    text[]);
