"""Everything that runs against one shard: schema, runtime, executor, GC, client."""
