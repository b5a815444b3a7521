-- 0009: start_workflows gains p_partial (start the rows of a batch that have no problem,
-- report the others). The old signature goes; callers of it match the new one through
-- the argument's default.
DROP FUNCTION IF EXISTS shardflow.start_workflows(
    text[], text[], jsonb[], text[], text[], double precision[], integer[]);
