"""Talk to the Citus node that holds a shard's schema, and follow it when Citus moves it.

On Citus (docs/citus.md) a shard is a distributed schema whose tables live on one
worker. A statement sent to the coordinator is routed to that worker, and runs there:
its NOTIFY fires on the worker, where nothing listens, and a PL/pgSQL function runs on
the coordinator, statement by statement, one network hop each. So the processes on the
hot path (executors and routers) connect to the worker itself, where every statement
of the shard runs locally (Citus's local execution), notifications reach the listeners
and advisory locks are where ``reclaim_dead`` tests them. They look again every few
seconds, and move their connections when ``citus_rebalance_start()`` has moved the
schema. The control plane goes to the schema's node too; DDL (migrations) stays on the
coordinator, the only node Citus takes it on.

On plain Postgres every function here leaves the DSN as it is.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

from shardflow.infra.pool import DEFAULT_SCHEMA, close_connection, schema_of
from shardflow.infra.sqlfiles import named_queries

q = named_queries("shardflow.infra", "placement.sql")

_PLANS = "plan_cache_mode"
# How often a process on the hot path checks where its schema is.
CHECK_SECONDS = 2.0


def on_node(dsn: str, host: str, port: int) -> str:
    """``dsn`` with its server replaced by ``host:port`` (user, database and parameters kept;
    a ``host``/``port`` parameter, as for a Unix socket, dropped)."""
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port", _PLANS)]
    # Citus cannot distribute a generic plan of some statements with parameters
    # (INSERT ... SELECT): a custom plan for each execution (asyncpg passes unknown DSN
    # parameters to the server as settings).
    query.append((_PLANS, "force_custom_plan"))
    auth = ""
    if parts.username:
        auth = quote(parts.username, safe="")
        if parts.password:
            auth += ":" + quote(parts.password, safe="")
        auth += "@"
    server = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{auth}{server}:{port}", query=urlencode(query)))


async def on_citus(conn: Any) -> bool:
    """Whether the server behind ``conn`` (a connection or a pool) runs Citus."""
    return bool(await conn.fetchval(q["citus"]))


async def node_of(conn: Any, schema: str) -> tuple[str, int] | None:
    """The Citus node (host, port) holding ``schema``, or None when the server has no
    Citus or the schema is not distributed (then the connection's server is the one)."""
    if schema == DEFAULT_SCHEMA or not await on_citus(conn):
        return None
    row = await conn.fetchrow(q["schema_node"], schema)
    return None if row is None else (str(row["nodename"]), int(row["nodeport"]))


async def resolve(dsn: str, timeout: float = 10.0) -> str:
    """The DSN to reach ``dsn``'s shard on: its schema's Citus node, else ``dsn`` itself."""
    schema = schema_of(dsn)
    if schema == DEFAULT_SCHEMA:
        return dsn
    conn = await asyncpg.connect(dsn, timeout=timeout)
    try:
        node = await node_of(conn, schema)
    finally:
        await close_connection(conn)
    return dsn if node is None else on_node(dsn, *node)


async def moved(pool: Any, dsn: str, current: str) -> str | None:
    """The DSN to move to when ``dsn``'s schema now lives elsewhere than ``current`` (the
    resolved DSN in use), asked through ``pool``; None while it has not moved."""
    schema = schema_of(dsn)
    if schema == DEFAULT_SCHEMA:
        return None
    node = await node_of(pool, schema)
    if node is None:
        return None
    target = on_node(dsn, *node)
    return None if target == current else target


class Follower:
    """A hot-path process's view of where its shard lives: ``node`` (the DSN it talks to)
    and, every CHECK_SECONDS, the look whether Citus moved the schema since."""

    def __init__(self, dsn: str, node: str | None = None) -> None:
        self.dsn = dsn
        self.node = node or dsn
        self._looked = time.monotonic()

    async def resolve(self, timeout: float = 10.0) -> str:
        self.node = await resolve(self.dsn, timeout)
        return self.node

    async def moved(self, pool: Any) -> str | None:
        """The node to move to, asked through ``pool`` at most every CHECK_SECONDS; None
        while the schema has not moved (or it is not time to look). The caller moves,
        then sets ``node``."""
        now = time.monotonic()
        if now - self._looked < CHECK_SECONDS:
            return None
        self._looked = now
        return await moved(pool, self.dsn, self.node)
