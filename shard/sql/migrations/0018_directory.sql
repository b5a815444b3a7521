-- 0018: a workflow ID is unique across the cluster. A workflow placed by a routing key
-- other than its ID keeps a small directory row on its ID's home shard (the shard of
-- slot_of(id)), written before the start on the routing key's shard; starts under the
-- ID itself, and lookups by ID, read it there. slot is the ID's slot: rows move with it.
CREATE TABLE shardflow.directory (
    id text PRIMARY KEY,
    slot integer NOT NULL,
    routing_key text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX directory_slot ON shardflow.directory (slot);
CREATE INDEX directory_created ON shardflow.directory (created_at);
