"""`shardflow citus-init`: lay a Shardflow cluster out on Citus.

Each Shardflow shard is a *distributed schema* (``shardflow_s1``, ``shardflow_s2``,
...) of one Citus database: its tables are single-shard tables co-located in one
group, so every statement of a shard runs on one worker as a single-shard (router)
statement, which is what row locks and ``FOR UPDATE SKIP LOCKED`` need in Citus; Citus
places the schemas on workers and ``citus_rebalance_start()`` moves them whole. The
Shardflow catalog is a regular (local) schema on the Citus coordinator, and shard
DSNs name their schema with ``shardflow.schema`` (see shard/pool.py).

``without_citus`` lays out the same schemas on plain Postgres, for tests and for
trying the layout without a Citus cluster: nothing but the placement differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from shardflow.catalog import admin as operations
from shardflow.catalog.store import Catalog
from shardflow.infra import placement
from shardflow.infra.errors import ShardflowError
from shardflow.infra.pool import SCHEMA_PARAM, close_connection
from shardflow.infra.sqlfiles import named_queries

q = named_queries("shardflow.coordinator", "citus.sql")


class CitusUnavailableError(ShardflowError):
    """The server has no Citus extension (or Citus refused a step)."""

    code = "citus_unavailable"


@dataclass(frozen=True)
class Layout:
    catalog_dsn: str
    shards: dict[str, str]  # shard ID -> DSN naming its schema


def shard_dsn(dsn: str, schema: str) -> str:
    """``dsn`` with ``shardflow.schema=schema`` set (any earlier value replaced)."""
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != SCHEMA_PARAM]
    return urlunsplit(parts._replace(query=urlencode([*query, (SCHEMA_PARAM, schema)])))


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ShardflowError(f"expected HOST:PORT, not {value!r}")
    return host, int(port)


async def _create_extension(conn: asyncpg.Connection, where: str) -> None:
    try:
        await conn.execute(q["extension"])
    except asyncpg.PostgresError as exc:
        raise CitusUnavailableError(
            f"the server at {where} has no Citus ({exc}); point --dsn at a Citus "
            "coordinator (its server needs shared_preload_libraries = 'citus'), or pass "
            "--without-citus for the same layout on plain Postgres"
        ) from exc


async def _add_worker(conn: asyncpg.Connection, dsn: str, worker: str) -> None:
    """Create the extension on the worker (Citus needs it there before it can add the
    node), then add it: reached with the coordinator's user, password and database."""
    host, port = _host_port(worker)
    try:
        node = await asyncpg.connect(placement.on_node(dsn, host, port), timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise CitusUnavailableError(f"worker {worker} cannot be reached: {exc}") from exc
    try:
        await _create_extension(node, worker)
    finally:
        await close_connection(node)
    try:
        await conn.execute(q["add_worker"], host, port)
    except asyncpg.PostgresError as exc:
        hint = ""
        if "SSL" in str(exc):
            hint = (
                "; Citus asks for SSL between nodes by default: give the nodes certificates "
                "or set citus.node_conninfo = 'sslmode=prefer' (or disable) on each"
            )
        raise CitusUnavailableError(
            f"the coordinator could not add worker {worker}: {exc}{hint}"
        ) from exc


async def add_nodes(dsn: str, coordinator_host: str | None, workers: tuple[str, ...]) -> None:
    """Create the extension (idempotently) on the coordinator, register its address
    (HOST:PORT, as the workers reach it) and add the workers not added yet."""
    conn = await asyncpg.connect(dsn)
    try:
        await _create_extension(conn, urlsplit(dsn).hostname or "localhost")
        if coordinator_host is not None:
            await conn.execute(q["coordinator_host"], *_host_port(coordinator_host))
        for worker in workers:
            await _add_worker(conn, dsn, worker)
    finally:
        await close_connection(conn)


async def init(
    dsn: str,
    shards: int,
    slots: int,
    *,
    without_citus: bool = False,
    rebalance: bool = False,
    coordinator_host: str | None = None,
    workers: tuple[str, ...] = (),
) -> Layout:
    """Create (idempotently) the shard schemas, the catalog and the slot spread; with
    ``workers`` (HOST:PORT), first register the coordinator's address and the workers."""
    if shards < 1:
        raise ShardflowError("--shards must be at least 1")
    ids = [f"s{k}" for k in range(1, shards + 1)]
    if not without_citus:
        await add_nodes(dsn, coordinator_host, workers)
    conn = await asyncpg.connect(dsn)
    try:
        if not without_citus:
            await conn.execute(q["schema_sharding_on"])
        for shard_id in ids:
            schema = f"shardflow_{shard_id}"
            if not await conn.fetchval(q["schema_exists"], schema):
                await conn.execute(f"CREATE SCHEMA {schema}")  # distributed under Citus
            elif not without_citus and not await conn.fetchval(q["schema_distributed"], schema):
                await conn.execute(q["schema_distribute"], schema)
        if not without_citus:
            await conn.execute(q["schema_sharding_off"])  # the catalog stays local
    finally:
        await close_connection(conn)
    layout = Layout(dsn, {s: shard_dsn(dsn, f"shardflow_{s}") for s in ids})
    catalog = await Catalog.connect(dsn, pool_size=1)
    try:
        await operations.init(catalog, slots, layout.shards)
    finally:
        await catalog.close()
    if rebalance and not without_citus:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(q["rebalance_start"])
        finally:
            await close_connection(conn)
    return layout
