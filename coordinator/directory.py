"""The leader's sweep of the ID directory (router/directory.py): a row whose workflow is
gone (removed by its shard's GC, or never started: a crash between the router's two
writes) is removed. Rows younger than ``GRACE`` are left alone, so a start still on its
way to its shard never loses its row."""

from __future__ import annotations

from collections import defaultdict

from shardflow.catalog.store import Catalog
from shardflow.infra.dbfaults import is_unavailable
from shardflow.infra.pool import ShardPools
from shardflow.shard.admin import ShardAdmin
from shardflow.shard.slots import slot_of

GRACE = 60.0  # seconds
BATCH = 500


class DirectorySweeper:
    def __init__(self, catalog: Catalog, grace: float = GRACE) -> None:
        self.catalog = catalog
        self.grace = grace
        self._pools = ShardPools(timeout=10)

    async def close(self) -> None:
        await self._pools.close()

    async def sweep(self) -> int:
        """One pass over every shard's directory; the rows removed. A shard that cannot
        be reached is left for the next pass."""
        smap = await self.catalog.slot_map()
        removed = 0
        for home in smap.shards.values():
            try:
                admin = ShardAdmin(await self._pools.get(home.dsn))
                rows = await admin.directory_stale(self.grace, BATCH)
                by_holder: dict[str, list[tuple[str, str]]] = defaultdict(list)
                for wid, key in rows:
                    by_holder[smap.owners[slot_of(key, smap.slots)]].append((wid, key))
                gone: list[tuple[str, str]] = []
                for shard_id, held in by_holder.items():
                    holder = ShardAdmin(await self._pools.get(smap.shards[shard_id].dsn))
                    present = await holder.workflows_present([wid for wid, _ in held])
                    gone += [(wid, key) for wid, key in held if wid not in present]
                if gone:
                    removed += await admin.directory_forget(gone)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
        return removed
