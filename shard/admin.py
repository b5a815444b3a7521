"""The control plane's one door into a shard's database: slots, moves, limits, registry.

The coordinator, the catalog and the health checks call these methods, never the
shard's SQL by name; each is one statement of ``shard/sql/queries.sql`` (the SQL API's
functions do the work and check what they must: epochs, phases, the leader's fences).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from shardflow.infra.errors import ShardflowError
from shardflow.shard.queries import query


class StaleTermError(ShardflowError):
    """A newer leader's term reached this shard: the caller no longer leads."""

    code = "stale_term"


if TYPE_CHECKING:
    Db = asyncpg.Pool | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy[Any]


class ShardAdmin:
    def __init__(self, db: Db) -> None:
        self.db = db

    async def schema_version(self) -> int:
        return int(await self.db.fetchval(query("schema_version")))

    async def settings_set_slots(self, slots: int) -> None:
        await self.db.execute(query("settings_set_slots"), str(slots))

    async def slots_own(self, slots: Sequence[int], epochs: Sequence[int]) -> None:
        """Take ownership of ``slots`` at these epochs (a new cluster, or a spread)."""
        await self.db.execute(query("slots_own"), list(slots), list(epochs))

    async def leader_term(self, term: int) -> None:
        """Tell the shard a leader's term; StaleTermError if a newer one was heard."""
        await self._termed(query("leader_term"), term)

    async def slot_fence(self, slot: int, epoch: int, term: int) -> Any:
        """Mark ``slot`` moving with a new epoch; its live leases are fenced with it."""
        return await self._termed(query("slot_fence"), slot, epoch, term)

    async def slot_precopy_horizon(self) -> datetime:
        return await self.db.fetchval(query("slot_precopy_horizon"))  # type: ignore[no-any-return]

    async def slot_export(self, slot: int, before: datetime, finished: bool) -> str:
        """The slot's rows as one JSON document: the finished ones before ``before``
        (pre-copy), or everything else (the live copy)."""
        return str(await self.db.fetchval(query("slot_export"), slot, before, finished))

    async def slot_import(
        self, move_id: int, phase: str, slot: int, epoch: int, data: str, term: int
    ) -> int:
        """Rows imported; a phase already recorded for the move imports nothing again."""
        sql = query("slot_import")
        return int(await self._termed(sql, move_id, phase, slot, epoch, data, term))

    async def slot_own(self, slot: int, epoch: int, expected: str, term: int) -> Any:
        """Own ``slot`` at ``epoch`` if its state here is ``expected``."""
        return await self._termed(query("slot_own"), slot, epoch, expected, term)

    async def slot_drop(self, slot: int, term: int) -> Any:
        return await self._termed(query("slot_drop"), slot, term)

    async def _termed(self, sql: str, *args: Any) -> Any:
        """A move call under a leader's term (the last argument)."""
        try:
            return await self.db.fetchval(sql, *args)
        except asyncpg.PostgresError as exc:
            if getattr(exc, "sqlstate", None) == "SF007":
                raise StaleTermError(str(exc)) from None
            raise

    async def slots_incoming(self) -> set[int]:
        return {r["slot"] for r in await self.db.fetch(query("slots_incoming"))}

    async def limits_demand(self, names: Sequence[str]) -> list[asyncpg.Record]:
        return list(await self.db.fetch(query("limits_demand"), list(names)))

    async def limit_share_set(self, name: str, limit: int, share: int) -> None:
        await self.db.execute(query("limit_share_set"), name, limit, share)

    async def define_workflow(self, name: str, definition: str) -> str:
        """Define a SQL workflow; its version."""
        return str(await self.db.fetchval(query("define_workflow"), name, definition))

    async def directory_stale(self, older_than: float, limit: int) -> list[tuple[str, str]]:
        """Directory rows (ID, routing key) older than ``older_than`` seconds."""
        rows = await self.db.fetch(query("directory_stale"), older_than, limit)
        return [(r["id"], r["routing_key"]) for r in rows]

    async def directory_forget(self, rows: Sequence[tuple[str, str]]) -> int:
        """Remove directory rows (ID, routing key) whose workflow is gone."""
        ids, keys = [i for i, _ in rows], [k for _, k in rows]
        return len(await self.db.fetch(query("directory_forget"), ids, keys))

    async def workflows_present(self, ids: Sequence[str]) -> set[str]:
        return {r["id"] for r in await self.db.fetch(query("workflows_present"), list(ids))}

    async def workflow_state(self, workflow_id: str) -> str | None:
        state = await self.db.fetchval(query("workflow_state"), workflow_id)
        return None if state is None else str(state)
