"""Everything that runs against one shard: schema, runtime, executor, GC, client."""

# Imported as shardflow.shard only: the bare name (the repository root on sys.path) would
# load a second copy of every module, with error classes of its own.
if __name__ != "shardflow.shard":
    raise ImportError(f"import shardflow.shard, not {__name__}")
