"""Schema migrations, the slot hash in Python and SQL, and named queries."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import asyncpg
import pytest

from shardflow.devcluster.launcher import LocalPostgres, PostgresServer
from shardflow.infra.sqlfiles import parse, sql_text
from shardflow.shard.migrate import function_files, migrate, migrations
from shardflow.shard.queries import load
from shardflow.shard.slots import slot_of
from tests.conftest import create_database

DATA = Path(__file__).parent / "data"


def _dump(cluster: LocalPostgres, dsn: str) -> str:
    out = subprocess.run(
        [
            str(cluster.bindir / "pg_dump"),
            "--schema-only",
            "--schema=shardflow",
            "--exclude-table=shardflow.schema_migrations",
            "--no-owner",
            dsn,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    skip = ("--", "\\restrict", "\\unrestrict")
    return "\n".join(line for line in out.splitlines() if not line.startswith(skip))


async def test_migrations_give_exactly_schema_sql(pg: PostgresServer, pg_cluster: LocalPostgres):
    migrated = await create_database(pg, template="template0")
    reference = await create_database(pg, template="template0")
    conn = await asyncpg.connect(migrated)
    try:
        assert await migrate(conn) == [m.version for m in migrations()]
        assert await migrate(conn) == [], "a second run applies nothing"
    finally:
        await conn.close()
    conn = await asyncpg.connect(reference)
    try:
        await conn.execute(sql_text("shardflow.shard", "schema.sql"))
        for text in function_files():
            await conn.execute(text)
    finally:
        await conn.close()
    assert _dump(pg_cluster, migrated) == _dump(pg_cluster, reference)


async def test_migrate_twice_changes_nothing(pg: PostgresServer, pg_cluster: LocalPostgres):
    dsn = await create_database(pg, template="template0")
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        before = _dump(pg_cluster, dsn)
        await migrate(conn)
        assert _dump(pg_cluster, dsn) == before
        assert await conn.fetchval("SELECT count(*) FROM shardflow.schema_migrations") == len(
            migrations()
        )
    finally:
        await conn.close()


async def test_slot_vectors_match_in_python_and_sql(dsn: str):
    vectors = json.loads((DATA / "slot_vectors.json").read_text())["vectors"]
    assert len(vectors) >= 100
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT shardflow.slot_of(k, s) AS slot FROM unnest($1::text[], $2::int[]) AS t(k, s)",
            [v["key"] for v in vectors],
            [v["slots"] for v in vectors],
        )
    finally:
        await conn.close()
    for vector, row in zip(vectors, rows, strict=True):
        assert slot_of(vector["key"], vector["slots"]) == vector["slot"]
        assert row["slot"] == vector["slot"], vector


def test_queries_are_named_and_unique():
    queries = load()
    assert "workflow_claim_batch" in queries and "checkpoint_flush" in queries
    assert all(q.strip() and not q.strip().endswith(";") for q in queries.values())


def test_fragments_are_pasted_where_used_and_are_not_queries():
    text = (
        "-- name: _cols\n    a, b\n\n"
        "-- name: q\nSELECT\n-- use: _cols\nFROM t;\n\n"
        "-- name: r\nSELECT 1;\n"
    )
    assert parse(text) == {"q": "SELECT\n    a, b\nFROM t", "r": "SELECT 1"}
    with pytest.raises(ValueError, match="names no fragment"):
        parse("-- name: q\nSELECT\n-- use: _later\n\n-- name: _later\n1\n")
    with pytest.raises(ValueError, match="defined twice"):
        parse("-- name: q\nSELECT 1\n-- name: q\nSELECT 2\n")
    assert not [name for name in load() if name.startswith("_")]
