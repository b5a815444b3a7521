"""Control plane: catalog, membership, health, leader and term, slot moves, schedules, limits."""

# Imported as shardflow.coordinator only: the bare name (the repository root on sys.path)
# would load a second copy of every module, with error classes of its own.
if __name__ != "shardflow.coordinator":
    raise ImportError(f"import shardflow.coordinator, not {__name__}")
