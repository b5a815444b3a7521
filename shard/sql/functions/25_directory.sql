-- The directory (migration 0018): a workflow ID is unique across the cluster. A workflow
-- placed by a routing key other than its ID has a row on the ID's home shard (that of
-- slot_of(id)), written by the router before the start on the routing key's shard.
-- Starts under the ID itself read it (start_one, start_workflows: 'id_elsewhere'), so do
-- lookups by ID; the leading coordinator removes rows whose workflow is gone (removed by
-- its shard's GC, or never started: a crash between the two writes).
-- Applied (CREATE OR REPLACE) after the migrations on every `migrate`, in file name
-- order; errors carry SQLSTATEs of class SF (shardflow/infra/errors.py).

-- Reserve p_id for a workflow placed by p_key; the routing key that holds the ID now:
-- p_key (reserved now or before), another key (the caller looks on that key's shard and
-- hands the row over when the workflow is not there: directory_move), or p_id itself
-- when a workflow with this ID lives here under its own key. Locks the ID's slot row
-- (FOR UPDATE against the starts' FOR SHARE), so a start of the ID under its own key and
-- this one are ordered.
CREATE OR REPLACE FUNCTION shardflow.directory_claim(p_id text, p_key text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_slot integer := shardflow.slot_of(p_id, shardflow.slot_count());
    v_key text;
BEGIN
    PERFORM 1 FROM shardflow.slots s WHERE s.slot = v_slot AND s.state = 'owned' FOR UPDATE;
    IF NOT FOUND AND EXISTS (SELECT 1 FROM shardflow.slots) THEN
        PERFORM shardflow.raise_start_problem(p_id, NULL, 'slot_moved');
    END IF;
    IF EXISTS (SELECT 1 FROM shardflow.workflows w WHERE w.id = p_id AND w.routing_key = p_id)
    THEN
        RETURN p_id;
    END IF;
    INSERT INTO shardflow.directory (id, slot, routing_key) VALUES (p_id, v_slot, p_key)
    ON CONFLICT (id) DO NOTHING;
    SELECT d.routing_key INTO v_key FROM shardflow.directory d WHERE d.id = p_id;
    RETURN v_key;
END
$$;

-- Hand an ID's row from p_old to p_new (no workflow was found under p_old) once the row
-- is older than p_age seconds (a start still on its way has landed by then); true when
-- done, false when the row is younger or changed meanwhile.
CREATE OR REPLACE FUNCTION shardflow.directory_move(p_id text, p_old text, p_new text,
                                                   p_age double precision)
RETURNS boolean LANGUAGE sql AS $$
    WITH moved AS (
        UPDATE shardflow.directory SET routing_key = p_new, created_at = now()
        WHERE id = p_id AND routing_key = p_old
          AND created_at < now() - make_interval(secs => p_age)
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM moved)
$$;
