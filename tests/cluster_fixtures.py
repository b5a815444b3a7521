"""A real 3-shard cluster for router tests: catalog + shard servers, executors, routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from shardflow.catalog.store import Catalog
from shardflow.devcluster.launcher import LocalPostgres, PostgresServer
from shardflow.router.app import RouterServer
from shardflow.router.client import Client
from shardflow.router.settings import RouterSettings
from shardflow.shard.executor import Executor
from shardflow.shard.sdk import Registry
from shardflow.shard.slots import slot_of
from tests.conftest import _make_template, create_database, settings_for

SLOTS = 64
SHARDS = ("c0", "c1", "c2")

ADMIN_TOKEN = "test-admin"


@pytest.fixture(scope="session")
def cluster_servers(pg_cluster: LocalPostgres, pg: PostgresServer) -> dict[str, PostgresServer]:
    import asyncio

    servers = {s.name: s for s in pg_cluster.start(*SHARDS)}
    for server in servers.values():
        asyncio.run(_make_template(server))
    return servers


@dataclass
class LiveCluster:
    catalog: Catalog
    catalog_dsn: str
    shard_dsns: dict[str, str]
    executors: dict[str, Executor] = field(default_factory=dict)
    routers: list[RouterServer] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    async def add_router(self, **overrides: Any) -> Client:
        """A router of the cluster (admin token ADMIN_TOKEN unless overridden) and a
        client of it that holds its tokens."""
        base = {"catalog": self.catalog_dsn, "port": 0, "refresh_interval": 0.2}
        settings = RouterSettings.load({**base, "admin_tokens": [ADMIN_TOKEN], **overrides}, env={})
        router = RouterServer(settings)
        await router.start()
        self.routers.append(router)
        token = overrides.get("tokens", [None])[0]
        admin = (settings.admin_tokens or [None])[0]
        client = Client(router.url, token, admin_token=admin, retries=0)
        self.clients.append(client)
        return client

    async def start_executor(self, shard_id: str, app: str = "tests.apps.basic") -> Executor:
        settings = settings_for(self.shard_dsns[shard_id], shard=shard_id, app=[app])
        executor = Executor(settings, Registry.from_modules(settings.app))
        await executor.start()
        names = [(w.name, w.version) for w in executor.registry.workflows.values()]
        await self.catalog.registry_add(shard_id, names)
        self.executors[shard_id] = executor
        return executor

    def shard_of(self, key: str) -> str:
        slot = slot_of(key, SLOTS)
        n = len(SHARDS)
        return next(
            s for i, s in enumerate(SHARDS) if SLOTS * i // n <= slot < SLOTS * (i + 1) // n
        )

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for router in self.routers:
            await router.stop()
        for executor in self.executors.values():
            if not executor._stopping:
                await executor.shutdown()
        await self.catalog.close()

    async def fetch_on(self, shard_id: str, sql: str, *args: Any) -> list[Any]:
        conn = await asyncpg.connect(self.shard_dsns[shard_id])
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def count_on(self, shard_id: str, sql: str) -> int:
        conn = await asyncpg.connect(self.shard_dsns[shard_id])
        try:
            return int(await conn.fetchval(sql))
        finally:
            await conn.close()


APP_TABLE = """
CREATE TABLE IF NOT EXISTS app_rows (
    workflow_id text NOT NULL,
    slot integer NOT NULL DEFAULT current_setting('shardflow.slot')::integer
);
SELECT shardflow.colocate('app_rows', 'slot');
"""


@pytest.fixture
async def growing(
    pg: PostgresServer, cluster_servers: dict[str, PostgresServer]
) -> AsyncIterator[LiveCluster]:
    """Two shards owning every slot (c0, c1), and c2 ready to be added; a co-located
    application table on each; executors on all three (c2's idle until it owns slots)."""
    catalog_dsn = await create_database(pg, template="template0")
    catalog = await Catalog.connect(catalog_dsn)
    await catalog.create(SLOTS)
    shard_dsns = {}
    for shard_id in SHARDS:
        shard_dsns[shard_id] = await create_database(cluster_servers[shard_id])
        conn = await asyncpg.connect(shard_dsns[shard_id])
        try:
            await conn.execute(APP_TABLE)
        finally:
            await conn.close()
    for shard_id in SHARDS[:2]:
        await catalog.add_shard(shard_id, shard_dsns[shard_id])
    await catalog.spread()
    tc = LiveCluster(catalog, catalog_dsn, shard_dsns)
    for shard_id in SHARDS[:2]:
        await tc.start_executor(shard_id, app="tests.apps.crash")
    yield tc
    await tc.close()


@pytest.fixture
async def cluster(
    pg: PostgresServer, cluster_servers: dict[str, PostgresServer]
) -> AsyncIterator[LiveCluster]:
    catalog_dsn = await create_database(pg, template="template0")
    catalog = await Catalog.connect(catalog_dsn)
    await catalog.create(SLOTS)
    shard_dsns = {}
    for shard_id in SHARDS:
        shard_dsns[shard_id] = await create_database(cluster_servers[shard_id])
        await catalog.add_shard(shard_id, shard_dsns[shard_id])
    await catalog.spread()
    tc = LiveCluster(catalog, catalog_dsn, shard_dsns)
    for shard_id in SHARDS:
        await tc.start_executor(shard_id)
    yield tc
    await tc.close()
