"""The catalog: the cluster's shards, slot map and workflow registry.

Creating a cluster fixes its slot count. Adding a shard migrates its schema and
records it with no slots; ``assign`` gives slots to a shard in the catalog and on
the shard itself (with their epochs), then bumps the map version routers watch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from shardflow.infra import pool as shard_pool
from shardflow.infra.errors import ShardflowError
from shardflow.infra.pool import create_pool
from shardflow.infra.sqlfiles import named_queries
from shardflow.shard.migrate import migrate
from shardflow.shard.queries import query as shard_query

if TYPE_CHECKING:
    from shardflow.coordinator.launcher import PostgresServer


class CatalogError(ShardflowError):
    code = "catalog_error"


def q(name: str) -> str:
    return named_queries("shardflow.coordinator", "queries.sql")[name]


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
            await migrate(conn, "shardflow.coordinator")
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
            await conn.execute(shard_query("settings_set_slots"), str(await self.slot_count()))
        finally:
            await shard_pool.close_connection(conn)
        try:
            await self.pool.execute(q("shard_add"), shard_id, dsn)
        except asyncpg.UniqueViolationError as exc:
            raise CatalogError(f"shard {shard_id} or its DSN is already in the catalog") from exc

    async def upgrade(self) -> dict[str, list[int]]:
        """Apply new migrations, the catalog's first, then each shard's in turn, while the
        cluster keeps serving. The versions applied now, by "catalog" and shard ID."""
        async with self.pool.acquire() as conn:
            applied = {"catalog": await migrate(conn, "shardflow.coordinator")}
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
                await shard_conn.execute(
                    shard_query("slots_own"), [r["slot"] for r in rows], [r["epoch"] for r in rows]
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


async def ensure_database(server: PostgresServer, name: str) -> None:
    """Create database ``name`` (a constant of ours, quoted as an identifier) on a local
    server if missing. An existing one is reached directly: a server's autovacuum visits
    every database something ever connected to (starting a worker process each time),
    so the admin database is connected to only to create."""
    try:
        await (await asyncpg.connect(server.dsn(name))).close()
        return
    except asyncpg.InvalidCatalogNameError:
        pass
    conn = await asyncpg.connect(server.dsn())
    try:
        if not await conn.fetchval(q("database_exists"), name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await shard_pool.close_connection(conn)
