"""Shards as schemas of one database (the layout of the Citus backend, where each shard
is a distributed schema): `shardflow citus-init`, workflows, events and timers on each
schema, and slot moves between schemas, on plain Postgres."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shardflow.catalog import admin as operations
from shardflow.catalog.store import Catalog
from shardflow.coordinator import citus
from shardflow.devcluster.launcher import PostgresServer
from shardflow.infra.errors import SettingsError
from shardflow.infra.pool import connect, in_schema, schema_of
from tests.cluster_fixtures import LiveCluster
from tests.conftest import ROOT, create_database
from tests.test_rebalance import _moves_done, _run_coordinator
from tests.waiting import until

SQL_FILES = [
    *sorted((ROOT / "shard" / "sql").rglob("*.sql")),
    ROOT / "metrics" / "sql" / "shard_stats.sql",
]


def test_the_schema_rewrite_touches_qualifiers_only():
    sql = "SELECT shardflow.f(x), current_setting('shardflow.slot') FROM shardflow.ready"
    assert in_schema(sql, "shardflow_s2") == (
        "SELECT shardflow_s2.f(x), current_setting('shardflow.slot') FROM shardflow_s2.ready"
    )
    assert in_schema(sql, "shardflow") is sql
    assert schema_of("postgresql://h/db?sslmode=require&shardflow.schema=shardflow_s3") == (
        "shardflow_s3"
    )
    with pytest.raises(SettingsError, match="identifier"):
        schema_of("postgresql://h/db?shardflow.schema=Robert');DROP")


# Postgres's own views: local to the node a statement runs on (see docs/citus.md).
NODE_LOCAL = {
    "pg_locks",
    "pg_stat_activity",
    "pg_stat_database",
    "pg_stat_user_tables",
    "pg_type",
    "pg_namespace",
    "pg_extension",
}
RELATION = re.compile(
    # (not the FROM of extract(epoch FROM ...) or of IS DISTINCT FROM)
    r"(?<!epoch )(?<!DISTINCT )\b(?:FROM|JOIN|INTO|UPDATE|TABLE|EXISTS)\s+"
    r"([a-z_]+(?:\.[a-z_]+)?)(\s*\()?"
)


def test_every_shard_statement_stays_in_the_shard_schema():
    """Citus runs row locks (FOR UPDATE SKIP LOCKED) only in single-shard statements. In
    schema-based sharding a shard's tables form one co-located group, so a statement is
    single-shard when every table it names is the shard's: no statement of the shard
    runtime names a table of another schema (the catalog, public, another shard)."""
    checked = 0
    for path in SQL_FILES:
        text = re.sub(r"--[^\n]*", "", path.read_text())
        text = re.sub(r"'[^']*'", "''", text)  # literals: setting names, messages
        text = re.sub(r"CREATE SCHEMA IF NOT EXISTS shardflow;", "", text)
        text = re.sub(r"\bIF (?:NOT )?EXISTS\b", "", text)  # DDL guards, not subqueries
        ctes = set(re.findall(r"\b([a-z_]+) AS (?:MATERIALIZED )?\(", text))
        variables = set(re.findall(r"^\s+([a-z_]+) [a-z]+(?:\[\])?(?: := [^;]*)?;$", text, re.M))
        for name, call in RELATION.findall(text):
            checked += 1
            if "." in name:
                assert name.split(".")[0] == "shardflow", (path.name, name)
            elif not call and name not in {"NOT", "SELECT"}:
                assert name in ctes | variables | NODE_LOCAL, (path.name, name)
    assert checked > 100


@pytest.fixture(params=["plain", "citus"])
def schemas_server(request: pytest.FixtureRequest) -> Any:
    """The same layout on plain Postgres (--without-citus) and on the session's Citus."""
    return request.getfixturevalue("pg" if request.param == "plain" else "citus_cluster")


@pytest.fixture
async def schemas(schemas_server: Any) -> AsyncIterator[LiveCluster]:
    if isinstance(schemas_server, PostgresServer):
        dsn = await create_database(schemas_server, "template0")
        layout = await citus.init(dsn, 2, 32, without_citus=True)
        assert layout == await citus.init(dsn, 2, 32, without_citus=True)  # idempotent
    else:
        dsn = await schemas_server.new_database()
        layout = await schemas_server.init(dsn, shards=2, slots=32)
    catalog = await Catalog.connect(dsn)
    cluster = LiveCluster(catalog, dsn, layout.shards)
    for shard_id in layout.shards:
        await cluster.start_executor(shard_id, app="tests.apps.crash")
    yield cluster
    await cluster.close()


async def _ids_in(dsn: str) -> set[str]:
    conn = await connect(dsn)
    try:
        return {r["id"] for r in await conn.fetch("SELECT id FROM shardflow.workflows")}
    finally:
        await conn.close()


async def test_two_shards_in_one_database_run_and_move_slots(schemas: LiveCluster):
    dsn = schemas.catalog_dsn
    conn = await asyncpg.connect(dsn)
    try:
        names = {r[0] for r in await conn.fetch("SELECT nspname FROM pg_namespace")}
    finally:
        await conn.close()
    assert {"shardflow_s1", "shardflow_s2", "catalog"} <= names and "shardflow" not in names
    client = await schemas.add_router()
    nappers = [(await client.start("napper", {"seconds": 0.2}))["id"] for _ in range(40)]
    waiters = [(await client.start("waiter", None))["id"] for _ in range(10)]
    assert all(
        r == "rested"
        for r in await asyncio.gather(*(client.result(w, timeout=60) for w in nappers))
    )
    before = {s: await _ids_in(d) for s, d in schemas.shard_dsns.items()}
    assert before["s1"] and before["s2"] and not before["s1"] & before["s2"]
    stop = asyncio.Event()
    await _run_coordinator(schemas, stop)
    assert await operations.drain(schemas.catalog, "s2") == 16
    await until(lambda: _moves_done(schemas), timeout=120, what="the drain")
    for w in waiters:
        await client.send_event(w, "go", {"w": w})
    results = await asyncio.gather(*(client.result(w, timeout=60) for w in waiters))
    assert results == [{"w": w} for w in waiters]
    after = {s: await _ids_in(d) for s, d in schemas.shard_dsns.items()}
    assert after["s2"] == set() and after["s1"] == set(nappers) | set(waiters)
    stop.set()


async def test_citus_init_on_plain_postgres_says_what_is_missing(pg: PostgresServer):
    dsn = await create_database(pg, "template0")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shardflow",
        "citus-init",
        "--dsn",
        dsn,
        "--shards",
        "2",
        cwd=Path(ROOT),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    text = err.decode()
    assert "[citus_unavailable]" in text and "--without-citus" in text and "Traceback" not in text
