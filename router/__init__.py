"""HTTP router (aiohttp): hashes workflow IDs onto slots and slots onto shards."""

# Imported as shardflow.router only: the bare name (the repository root on sys.path) would
# load a second copy of every module, with error classes of its own.
if __name__ != "shardflow.router":
    raise ImportError(f"import shardflow.router, not {__name__}")
