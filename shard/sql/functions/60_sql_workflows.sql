-- SQL-defined workflows: checking and defining them (docs/sql-workflows.md).
-- Applied (CREATE OR REPLACE) after the migrations on every `migrate`, in file name
-- order; errors carry SQLSTATEs of class SF (shardflow/infra/errors.py).

-- Check one step of a SQL workflow's definition (see shardflow.define_workflow).
CREATE OR REPLACE FUNCTION shardflow.check_sql_step(p_step jsonb, p_where text)
RETURNS SETOF text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_kinds integer;
    v_key text;
    v_inner jsonb;
BEGIN
    IF jsonb_typeof(p_step) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s must be an object', p_where);
    END IF;
    v_kinds := (p_step ? 'sql')::int + (p_step ? 'parallel')::int + (p_step ? 'wait_event')::int
               + (p_step ? 'sleep_s')::int;
    IF v_kinds <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
            '%s must have exactly one of sql, parallel, wait_event, sleep_s', p_where);
    END IF;
    FOR v_key IN SELECT jsonb_object_keys(p_step) LOOP
        IF v_key NOT IN ('name', 'sql', 'retries', 'timeout_s', 'compensate', 'parallel',
                         'wait_event', 'sleep_s') THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                '%s has an unknown field %s', p_where, v_key);
        END IF;
    END LOOP;
    IF p_step ? 'sql' THEN
        IF jsonb_typeof(p_step -> 'name') IS DISTINCT FROM 'string' OR p_step ->> 'name' = ''
           OR jsonb_typeof(p_step -> 'sql') IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                '%s: a SQL step has a non-empty "name" and a "sql" string', p_where);
        END IF;
        IF p_step ? 'compensate' AND jsonb_typeof(p_step -> 'compensate') <> 'string' THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                '%s: "compensate" is a SQL string', p_where);
        END IF;
        IF p_step ? 'retries' AND (jsonb_typeof(p_step -> 'retries') <> 'number'
           OR (p_step ->> 'retries')::numeric NOT BETWEEN 0 AND 100
           OR (p_step ->> 'retries')::numeric % 1 <> 0) THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                '%s: "retries" is a whole number from 0 to 100', p_where);
        END IF;
        RETURN NEXT p_step ->> 'name';
    ELSIF p_step ? 'parallel' THEN
        IF jsonb_typeof(p_step -> 'parallel') <> 'array' OR jsonb_array_length(p_step -> 'parallel') = 0 THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                '%s: "parallel" is a non-empty array of SQL steps', p_where);
        END IF;
        FOR v_inner IN SELECT jsonb_array_elements(p_step -> 'parallel') LOOP
            IF NOT v_inner ? 'sql' THEN
                RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                    '%s: a parallel group holds SQL steps only', p_where);
            END IF;
            RETURN QUERY SELECT shardflow.check_sql_step(v_inner, p_where || ' (parallel)');
        END LOOP;
    ELSIF p_step ? 'wait_event' THEN
        IF jsonb_typeof(p_step -> 'wait_event') <> 'string' OR p_step ->> 'wait_event' = '' THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
                '%s: "wait_event" is an event name', p_where);
        END IF;
        RETURN NEXT p_step ->> 'wait_event';
    ELSIF jsonb_typeof(p_step -> 'sleep_s') <> 'number' OR (p_step ->> 'sleep_s')::numeric < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
            '%s: "sleep_s" is a number of seconds', p_where);
    END IF;
    IF p_step ? 'timeout_s' AND (jsonb_typeof(p_step -> 'timeout_s') <> 'number'
       OR (p_step ->> 'timeout_s')::numeric <= 0) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
            '%s: "timeout_s" is a positive number of seconds', p_where);
    END IF;
END
$$;

-- Define (or redefine) a workflow in SQL: {"steps": [...]} where a step is
--   {"name", "sql", "retries"?, "timeout_s"?, "compensate"?}  a transactional step: its
--       statement runs with $1 = the workflow's input and $2 = the results so far (jsonb,
--       by step name); its first column of the first row is its result; "compensate" runs,
--       if the workflow fails or is cancelled later, with $3 = that result as well;
--   {"parallel": [SQL steps]}  run at once; {"wait_event": name, "timeout_s"?}  its
--       payload is the result under that name; {"sleep_s": n}  a durable timer.
-- Returns the definition's version ('sql-' and a hash): instances started from now on use
-- it; running ones keep theirs. A name that a Python executor registered is refused.
CREATE OR REPLACE FUNCTION shardflow.define_workflow(p_name text, p_definition jsonb)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_version text := 'sql-' || left(md5(p_definition::text), 12);
    v_names text[];
BEGIN
    IF p_name IS NULL OR length(p_name) NOT BETWEEN 1 AND 200 OR p_name ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'a workflow name is 1 to 200 characters';
    END IF;
    IF jsonb_typeof(p_definition) IS DISTINCT FROM 'object'
       OR jsonb_typeof(p_definition -> 'steps') IS DISTINCT FROM 'array'
       OR jsonb_array_length(p_definition -> 'steps') = 0
       OR (SELECT count(*) FROM jsonb_object_keys(p_definition)) <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'a definition is {"steps": [...]} with at least one step';
    END IF;
    SELECT array_agg(n) INTO v_names FROM (
        SELECT shardflow.check_sql_step(s.value, format('step %s', s.ord)) AS n
        FROM jsonb_array_elements(p_definition -> 'steps') WITH ORDINALITY AS s(value, ord)) t;
    IF (SELECT count(DISTINCT n) FROM unnest(v_names) n) <> cardinality(v_names) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'step and event names must be unique within a definition';
    END IF;
    IF EXISTS (SELECT 1 FROM shardflow.registry g WHERE g.name = p_name AND g.version NOT LIKE 'sql-%') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
            'workflow %s is defined in code; pick another name', quote_literal(p_name));
    END IF;
    INSERT INTO shardflow.sql_workflows (name, version, definition)
    VALUES (p_name, v_version, p_definition) ON CONFLICT DO NOTHING;
    INSERT INTO shardflow.registry (name, version) VALUES (p_name, v_version)
    ON CONFLICT (name, version) DO UPDATE SET registered_at = excluded.registered_at;
    RETURN v_version;
END
$$;
