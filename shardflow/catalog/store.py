"""The catalog: the cluster's shards, slot map and workflow registry.

Creating a cluster fixes its slot count. Adding a shard migrates its schema and
records it with no slots; ``assign`` gives slots to a shard in the catalog and on
the shard itself (with their epochs), then bumps the map version routers watch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shardflow.infra import pool as shard_pool
from shardflow.infra.errors import ShardflowError
from shardflow.infra.pool import create_pool
from shardflow.infra.sqlfiles import named_queries
from shardflow.shard.admin import ShardAdmin
from shardflow.shard.cron import ScheduleSpec
from shardflow.shard.migrate import migrate


class CatalogError(ShardflowError):
    code = "catalog_error"


class ShardExistsError(CatalogError):
    """A shard ID or DSN the catalog has already (HTTP 409)."""

    code = "cluster_conflict"


def q(name: str) -> str:
    return named_queries("shardflow.catalog", "queries.sql")[name]


@dataclass(frozen=True, slots=True)
class ShardInfo:
    id: str
    dsn: str
    state: str


@dataclass(frozen=True, slots=True)
class SlotMap:
    version: int
    owners: tuple[str, ...]  # shard ID of every slot, by slot number
    shards: dict[str, ShardInfo]

    @property
    def slots(self) -> int:
        return len(self.owners)


class Catalog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, pool_size: int = 4) -> Catalog:
        return cls(await create_pool(dsn, min_size=1, max_size=pool_size))

    async def close(self) -> None:
        await shard_pool.close_pool(self.pool)

    async def create(self, slots: int = 1024) -> None:
        """Create the catalog schema and fix the slot count (idempotent)."""
        if slots < 1 or slots > 65536:
            raise CatalogError("the slot count must be between 1 and 65536")
        async with self.pool.acquire() as conn:
            await migrate(conn, "shardflow.catalog")
            await conn.execute(q("settings_init"), str(slots))

    async def slot_count(self) -> int:
        return int(await self.pool.fetchval(q("setting_get"), "slots"))

    async def add_shard(self, shard_id: str, dsn: str) -> None:
        """Migrate the shard's schema and record it (owning no slots yet)."""
        try:
            conn = await shard_pool.connect(dsn, timeout=10)
        except Exception as exc:
            raise CatalogError(f"shard {shard_id} at {dsn} is unreachable: {exc!r}") from exc
        try:
            await migrate(conn)
            await ShardAdmin(conn).settings_set_slots(await self.slot_count())
        finally:
            await shard_pool.close_connection(conn)
        try:
            await self.pool.execute(q("shard_add"), shard_id, dsn)
        except asyncpg.UniqueViolationError as exc:
            raise ShardExistsError(
                f"shard {shard_id} or its DSN is already in the catalog"
            ) from exc

    async def upgrade(self) -> dict[str, list[int]]:
        """Apply new migrations, the catalog's first, then each shard's in turn, while the
        cluster keeps serving. The versions applied now, by "catalog" and shard ID."""
        async with self.pool.acquire() as conn:
            applied = {"catalog": await migrate(conn, "shardflow.catalog")}
        for shard in await self.shards():
            shard_conn = await shard_pool.connect(shard.dsn, timeout=10)
            try:
                applied[shard.id] = await migrate(shard_conn)
            finally:
                await shard_pool.close_connection(shard_conn)
        return applied

    async def set_dsn(self, shard_id: str, dsn: str) -> None:
        await self.pool.execute(q("shard_set_dsn"), shard_id, dsn)

    async def shards(self) -> list[ShardInfo]:
        return [
            ShardInfo(r["id"], r["dsn"], r["state"]) for r in await self.pool.fetch(q("shard_list"))
        ]

    async def assign(self, shard_id: str, slots: Sequence[int]) -> None:
        """Give ``slots`` to a shard: on the shard first, then in the catalog's map."""
        shard = {s.id: s for s in await self.shards()}.get(shard_id)
        if shard is None:
            raise CatalogError(f"unknown shard {shard_id}")
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(q("slots_assign"), list(slots), shard_id)
            shard_conn = await shard_pool.connect(shard.dsn, timeout=10)
            try:
                await ShardAdmin(shard_conn).slots_own(
                    [r["slot"] for r in rows], [r["epoch"] for r in rows]
                )
            finally:
                await shard_pool.close_connection(shard_conn)
            await conn.fetchval(q("map_version_bump"))

    async def spread(self) -> None:
        """Assign every slot, evenly and in contiguous ranges, over the shards (new cluster)."""
        shards = [s.id for s in await self.shards()]
        if not shards:
            raise CatalogError("the cluster has no shard to own its slots")
        total = await self.slot_count()
        for i, shard_id in enumerate(shards):
            lo, hi = total * i // len(shards), total * (i + 1) // len(shards)
            await self.assign(shard_id, range(lo, hi))

    async def slot_map(self) -> SlotMap:
        row = await self.pool.fetchrow(q("slot_map"))
        assert row is not None
        shards = {s.id: s for s in await self.shards()}
        return SlotMap(int(row["version"]), tuple(row["owners"]), shards)

    async def map_version(self) -> int:
        return int(await self.pool.fetchval(q("map_version")))

    async def registry_add(self, shard_id: str, names: Sequence[tuple[str, str]]) -> None:
        await self.pool.execute(
            q("registry_add"), [n for n, _ in names], [v for _, v in names], shard_id
        )

    async def registered_shards(self) -> set[str]:
        return {r["shard_id"] for r in await self.pool.fetch(q("registry_shards"))}

    async def registry(self) -> dict[str, list[str]]:
        """Registered workflow names and their versions."""
        return {r["name"]: sorted(r["versions"]) for r in await self.pool.fetch(q("registry_list"))}

    # -- leader and term

    async def leader_try_lock(self, conn: asyncpg.Connection) -> bool:
        """The leader's advisory lock, taken on a session of its own (``conn``)."""
        return bool(await conn.fetchval(q("leader_try_lock")))

    async def leader_take(self, name: str, pid: int, lease: float) -> int:
        """Record ``name`` as the leader (its lock held by backend ``pid``) with a lease of
        ``lease`` seconds; its new term."""
        return int(await self.pool.fetchval(q("leader_take"), name, pid, lease))

    async def leader_renew(self, term: int, lease: float) -> bool:
        """Extend the lease of ``term``; False when another term has taken over."""
        return await self.pool.fetchval(q("leader_renew"), term, lease) is not None

    async def leader_evict(self) -> bool:
        """End the lock session of a leader whose lease ran out; True when one was ended."""
        return bool(await self.pool.fetchval(q("leader_evict")))

    async def leader(self) -> asyncpg.Record | None:
        return await self.pool.fetchrow(q("leader_get"))

    # -- membership and health

    async def shard_set_state(self, shard_id: str, state: str) -> None:
        await self.pool.execute(q("shard_set_state"), shard_id, state)

    async def shard_checked(self, shard_id: str) -> None:
        await self.pool.execute(q("shard_checked"), shard_id)

    async def shard_remove(self, shard_id: str) -> bool:
        """Forget a shard that owns nothing and takes part in no live move; False (and
        nothing changed) otherwise."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(q("moves_forget_shard"), shard_id)
                if await conn.fetchval(q("shard_remove"), shard_id) is None:
                    raise _KeepShard
                await conn.execute(q("registry_remove_shard"), shard_id)
                await conn.execute(q("limit_shares_forget_shard"), shard_id)
        except _KeepShard:
            return False
        return True

    # -- slot moves

    async def moves_plan(self, moves: Sequence[tuple[int, str, str]]) -> None:
        """Queue moves, each (slot, source, target)."""
        slots, sources, targets = zip(*moves, strict=True) if moves else ((), (), ())
        await self.pool.execute(q("moves_plan"), list(slots), list(sources), list(targets))

    async def moves_live(self) -> list[asyncpg.Record]:
        return list(await self.pool.fetch(q("moves_live")))

    async def moves_recent(self, limit: int) -> list[asyncpg.Record]:
        return list(await self.pool.fetch(q("moves_recent"), limit))

    async def move_advance(
        self, move_id: int, phase: str, to: str, term: int, fields: dict[str, Any]
    ) -> bool:
        """Move ``move_id`` from ``phase`` to ``to`` if ``term`` still leads."""
        row = await self.pool.fetchval(
            q("move_advance"),
            move_id,
            phase,
            to,
            term,
            fields.get("epoch"),
            fields.get("precopy_before"),
            fields.get("fenced_at"),
            fields.get("rows"),
            fields.get("pause_ms"),
            fields.get("error"),
        )
        return row is not None

    async def move_note_error(self, move_id: int, error: str) -> None:
        await self.pool.execute(q("move_note_error"), move_id, error)

    async def move_set_horizon(self, move_id: int, horizon: Any) -> Any:
        """Record the pre-copy horizon once; the one recorded (a resumed move keeps it)."""
        return await self.pool.fetchval(q("move_set_horizon"), move_id, horizon)

    async def slot_epoch(self, slot: int) -> int:
        row = await self.pool.fetchrow(q("slot_epoch"), slot)
        if row is None:
            raise CatalogError(f"slot {slot} is not in the slot map")
        return int(row["epoch"])

    async def slot_flip(self, slot: int, target: str, source: str, epoch: int, term: int) -> bool:
        """Give ``slot`` to ``target`` with ``epoch`` if ``term`` still leads."""
        flipped = await self.pool.fetchval(q("slot_flip"), slot, target, source, epoch, term)
        return flipped is not None

    # -- cluster-wide limits

    async def limits(self) -> dict[str, int]:
        return {r["name"]: int(r["max_running"]) for r in await self.pool.fetch(q("limit_list"))}

    async def limit_shares(self) -> dict[tuple[str, str], int]:
        """(name, shard) -> the share last given: what an unreachable shard may run."""
        rows = await self.pool.fetch(q("limit_shares"))
        return {(r["name"], r["shard"]): int(r["share"]) for r in rows}

    async def limit_share_record(self, name: str, shard_id: str, share: int) -> None:
        await self.pool.execute(q("limit_share_record"), name, shard_id, share)

    async def limit_set(self, name: str, max_running: int | None) -> None:
        """Cap ``name`` at ``max_running`` instances at once; None lifts the cap."""
        if max_running is None:
            await self.pool.execute(q("limit_clear"), name)
        else:
            await self.pool.execute(q("limit_set"), name, max_running)

    # -- schedules

    async def schedule_create(
        self, name: str, workflow: str, spec: ScheduleSpec, input_json: str | None, first: datetime
    ) -> bool:
        """False when the name is taken."""
        created = await self.pool.fetchval(
            q("schedule_create"),
            name,
            workflow,
            spec.cron,
            spec.timezone,
            spec.overlap,
            input_json,
            first,
        )
        return created is not None

    async def schedule_declare(self, name: str, spec: ScheduleSpec, first: datetime) -> None:
        await self.pool.execute(
            q("schedule_declare"), name, spec.cron, spec.timezone, spec.overlap, first
        )

    async def schedule_list(self) -> list[asyncpg.Record]:
        return list(await self.pool.fetch(q("schedule_list")))

    async def schedule_get(self, name: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(q("schedule_get"), name)

    async def schedule_delete(self, name: str) -> bool:
        return await self.pool.fetchval(q("schedule_delete"), name) is not None

    async def schedules_due(self, limit: int) -> list[asyncpg.Record]:
        return list(await self.pool.fetch(q("schedules_due"), limit))

    async def schedule_advance(
        self,
        name: str,
        expected: datetime,
        next_tick: datetime,
        tick: datetime,
        started: str | None,
    ) -> bool:
        """Move a schedule past ``tick`` if its next tick is still ``expected`` (another
        coordinator may have moved it first)."""
        done = await self.pool.execute(
            q("schedule_advance"), name, expected, next_tick, tick, started
        )
        return not done.endswith(" 0")


class _KeepShard(Exception):
    """Rolls back a shard removal that found the shard still in use."""
