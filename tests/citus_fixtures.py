"""A real Citus cluster (a coordinator and two workers), started once per test session.

Citus is built by ``../shared/citus/install.sh`` (``.ci/run`` runs it). Without it the
Citus tests skip with one line saying so; with ``CI=true`` a missing Citus fails them.
``SHARDFLOW_TEST_CITUS=1`` also turns the engine tests' ``dsn`` fixture into a fresh
distributed schema on this cluster (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from shardflow.coordinator import citus
from shardflow.devcluster.dev import CITUS_SETTINGS
from shardflow.devcluster.launcher import LocalPostgres, PostgresServer, find_bindir
from shardflow.infra import pool as shard_pool
from shardflow.shard.migrate import migrate

DATABASE = "shardflow"
_schemas = itertools.count()


def citus_available() -> bool:
    """Whether the Postgres found here has the Citus extension installed."""
    try:
        bindir = find_bindir()
    except Exception:
        return False
    share = Path(bindir).parent.parent.parent / "share" / "postgresql"
    libdir = Path(bindir).parent / "lib"
    control = [
        *share.glob("*/extension/citus.control"),
        *Path("/usr/share/postgresql").glob("*/extension/citus.control"),
    ]
    return bool(control) and (libdir / "citus.so").exists()


def require_citus() -> None:
    if citus_available():
        return
    message = "Citus is not installed: run `bash ../shared/citus/install.sh` as root"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (required in CI)")
    pytest.skip(message)


@dataclass
class CitusCluster:
    pg: LocalPostgres
    coordinator: PostgresServer
    workers: list[PostgresServer]

    @property
    def dsn(self) -> str:
        return self.coordinator.dsn(DATABASE)

    def node(self, server: PostgresServer) -> str:
        return f"127.0.0.1:{server.port}"

    async def new_database(self) -> str:
        """A fresh database on every node (Citus needs it on each), not yet laid out."""
        name = f"t_{os.getpid()}_{next(_schemas)}"
        for server in (self.coordinator, *self.workers):
            conn = await asyncpg.connect(server.dsn(DATABASE))
            try:
                await conn.execute(f"CREATE DATABASE {name}")
            finally:
                await conn.close()
        return self.coordinator.dsn(name)

    async def init(self, dsn: str, *, shards: int, slots: int) -> citus.Layout:
        """``citus-init`` on ``dsn`` with this cluster's nodes."""
        return await citus.init(
            dsn,
            shards,
            slots,
            coordinator_host=self.node(self.coordinator),
            workers=tuple(self.node(w) for w in self.workers),
        )

    async def new_schema(self) -> str:
        """A fresh distributed schema, migrated: the DSN of a shard living there."""
        schema = f"t_{os.getpid()}_{next(_schemas)}"
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute("SET citus.enable_schema_based_sharding TO on")
            await conn.execute(f"CREATE SCHEMA {schema}")
        finally:
            await conn.close()
        dsn = citus.shard_dsn(self.dsn, schema)
        conn = await shard_pool.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await shard_pool.close_connection(conn)
        return dsn


@pytest.fixture(scope="session")
def citus_cluster(pg_base: Path) -> Iterator[CitusCluster]:
    require_citus()
    pg = LocalPostgres(
        pg_base / "citus", durable=False, extra_settings=CITUS_SETTINGS, databases=(DATABASE,)
    )
    try:
        coordinator, *workers = pg.start("coordinator", "worker1", "worker2")
        asyncio.run(
            citus.add_nodes(
                coordinator.dsn(DATABASE),
                f"127.0.0.1:{coordinator.port}",
                tuple(f"127.0.0.1:{w.port}" for w in workers),
            )
        )
        yield CitusCluster(pg, coordinator, workers)
    finally:
        pg.stop()
