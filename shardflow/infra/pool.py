"""Connections and pools for shards and the catalog.

A shard's tables live in one schema, ``shardflow`` unless its DSN names another with
the ``shardflow.schema`` parameter (``...?shardflow.schema=shardflow_s2``): several
shards can then share one database, as in Citus's schema-based sharding, where each
shard is one distributed schema. The SQL files name the schema ``shardflow``; a
connection to another schema rewrites that qualifier in every statement it sends
(once per distinct statement), and nothing else: string literals such as the
``'shardflow.slot'`` setting keep their name.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from shardflow.infra.errors import SettingsError

DEFAULT_SCHEMA = "shardflow"
SCHEMA_PARAM = "shardflow.schema"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_QUALIFIER = re.compile(r"(?<![\w'.\"])shardflow\.(?=[a-z_])")
# (with or without its semicolon: on Citus, migrations are sent statement by statement)
_CREATE = re.compile(r"\bCREATE SCHEMA IF NOT EXISTS shardflow(?=\s*;|\s*$)")


def schema_of(dsn: str) -> str:
    """The shard schema a DSN names (``shardflow.schema``), by default ``shardflow``."""
    values = parse_qs(urlsplit(dsn).query).get(SCHEMA_PARAM)
    if not values:
        return DEFAULT_SCHEMA
    schema = values[-1]
    if not _IDENTIFIER.match(schema):
        raise SettingsError(
            f"{SCHEMA_PARAM}={schema!r} is not a lower-case SQL identifier", setting="dsn"
        )
    return schema


@functools.lru_cache(maxsize=8192)
def in_schema(query: str, schema: str) -> str:
    """``query`` with its ``shardflow.`` qualifiers naming ``schema`` instead."""
    if schema == DEFAULT_SCHEMA:
        return query
    query = _CREATE.sub(f"CREATE SCHEMA IF NOT EXISTS {schema}", query)
    return _QUALIFIER.sub(schema + ".", query)


class SchemaConnection(asyncpg.Connection):
    """A connection to a shard whose schema is not ``shardflow`` (see the module doc)."""

    schema = DEFAULT_SCHEMA

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        return await super().execute(in_schema(query, self.schema), *args, timeout=timeout)

    async def _get_statement(self, query: str, timeout: Any, **kwargs: Any) -> Any:
        # Every prepared path (fetch*, execute with arguments, executemany, prepare,
        # cursors) goes through here.
        parent: Any = super()
        return await parent._get_statement(in_schema(query, self.schema), timeout, **kwargs)


@functools.cache
def connection_class(schema: str) -> type[asyncpg.Connection]:
    if schema == DEFAULT_SCHEMA:
        return asyncpg.Connection
    return type(f"SchemaConnection_{schema}", (SchemaConnection,), {"schema": schema})


# A peer lost to a host crash or a partition is found in seconds, not after the kernel's
# two hours of keepalive idling: the server probes an idle client after 2 s, every 1 s,
# and drops it after 3 unanswered probes, or once data it sent stays unacknowledged for
# 5 s. The session then ends, and with it its advisory locks: the dead executor's peers
# reclaim its workflows at once instead of waiting out the lease (docs/operations.md).
# Ignored on Unix sockets, which have no such failure.
SERVER_KEEPALIVE = {
    "tcp_keepalives_idle": "2",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "5000",
}
# The same on our end of each TCP connection, so a statement sent into a partition fails
# in seconds instead of waiting for its command timeout.
_CLIENT_KEEPALIVE = (
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", 0), 2),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", 0), 1),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", 0), 3),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 0), 5000),
)


def _server_settings(kwargs: dict[str, Any]) -> dict[str, str]:
    return {**SERVER_KEEPALIVE, **(kwargs.pop("server_settings", None) or {})}


async def keep_alive(conn: asyncpg.Connection) -> None:
    """Set the client side of the keepalive above on a TCP connection (asyncpg exposes its
    socket only through the transport)."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    for level, option, value in _CLIENT_KEEPALIVE:
        if option:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, option, value)


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """``asyncpg.connect`` for a shard or the catalog: its schema honoured, keepalives on."""
    settings = _server_settings(kwargs)
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn, connection_class=connection_class(schema_of(dsn)), server_settings=settings, **kwargs
    )
    await keep_alive(conn)
    return conn


async def close_connection(conn: asyncpg.Connection | None, timeout: float = 5.0) -> None:
    """Close ``conn`` within ``timeout`` without raising. When the polite close fails or
    times out (a server that died or hangs), asyncpg drops the socket itself, so the
    connection is gone either way and the caller's own error, if any, is the one that
    propagates. Cancellation still propagates."""
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close(timeout=timeout)


# A connection taken out of use is closed this long after: a statement may still be running
# on it, and closing a connection under a statement breaks asyncpg's protocol state
# ("got result for unknown protocol state") for the caller of that statement.
RETIRE_AFTER = 10.0


def retire(
    conn: asyncpg.Connection | None,
    tasks: set[asyncio.Task[None]],
    delay: float = RETIRE_AFTER,
) -> None:
    """Close ``conn`` in ``delay`` seconds (at once if the task is cancelled first); the
    task is kept in ``tasks`` until it is done, for the owner to cancel at shutdown."""
    if conn is None:
        return

    async def later() -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            await close_connection(conn)

    task = asyncio.create_task(later())
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def close_pool(pool: asyncpg.Pool | None, timeout: float = 10.0) -> None:
    """``close_connection`` for a pool (asyncpg terminates a pool whose close fails or is
    cancelled by the timeout)."""
    if pool is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pool.close(), timeout)


# A batch this small means a quiet process: its statement goes on the connection that
# listens, when there is one (ResultWaiters.statements, ShardStore.listener). Postgres
# wakes every listening backend of the database for every NOTIFY; on the listening
# connection, the statement's own NOTIFY wakes no backend of ours (a backend does not
# signal itself), and a notification that arrives meanwhile comes back with its answer
# instead of waking an idle backend: two process wake-ups fewer per workflow at low load.
# A busy process sends its larger batches through the pool instead: a listener that also
# runs statements reads the notification queue after each one. Whether that costs more
# than it saves at saturation, A/B runs disagreed (docs/benchmarks.md, "Listening where
# you write"); 6 beat both 2 and no such path in every pair measured against them.
QUIET_BATCH = 6


def quiet_target(
    listener: asyncpg.Connection | None, pool: asyncpg.Pool, batch: int
) -> asyncpg.Connection | asyncpg.Pool:
    """Where a statement for ``batch`` workflows goes: the listening connection while it is
    up and the batch is quiet (QUIET_BATCH), else the pool. The caller sends one statement
    at a time, so the connection is never asked for two at once."""
    if batch <= QUIET_BATCH and listener is not None and not listener.is_closed():
        return listener
    return pool


async def _keep(_: Any) -> None:
    """No reset on release: pooled connections never keep session state (no LISTEN,
    no session advisory lock, no SET), so asyncpg's default reset (four statements per
    release: unlock, CLOSE ALL, UNLISTEN, RESET ALL) is pure overhead on the hot path."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    timeout: float = 60.0,
    command_timeout: float | None = None,
) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        command_timeout=command_timeout,
        reset=_keep,
        connection_class=connection_class(schema_of(dsn)),
        server_settings=dict(SERVER_KEEPALIVE),
        init=keep_alive,
        # Keep idle connections (asyncpg closes them after 300 s by default). Under a
        # steady load the pool hands out its most recent connections first, so the others
        # idle out and are opened again at the next burst of concurrency: a new backend
        # (8-15 ms of the server's CPU) and a first plan of every statement, when the
        # load is highest. A pool is small and bounded; its connections may as well stay.
        max_inactive_connection_lifetime=0,
    )
    return pool


async def repoint(pool: asyncpg.Pool, dsn: str) -> None:
    """Make ``pool``'s connections go to ``dsn`` from now on: new ones at once, the
    current ones as they come back (the same settings as before, another server)."""
    kwargs: dict[str, Any] = dict(getattr(pool, "_connect_kwargs", {}))
    pool.set_connect_args(dsn, **kwargs)
    await pool.expire_connections()


class ShardPools:
    """Small pools to many shards, made on first use and kept by DSN (for the control
    plane: moves, schedules, limits run short statements, where connecting costs more).

    On Citus a pool goes to the node holding the shard's schema, looked up again after
    placement.CHECK_SECONDS: a slot move's pre-copy horizon reads the open transactions of
    the node where the shard's writes run (shardflow/infra/placement.py)."""

    def __init__(self, timeout: float, size: int = 2) -> None:
        self.timeout = timeout
        self.size = size
        self._pools: dict[str, asyncpg.Pool] = {}
        self._nodes: dict[str, tuple[float, str]] = {}  # DSN -> (when looked up, node DSN)

    async def get(self, dsn: str) -> asyncpg.Pool:
        node = await self._node(dsn)
        if node not in self._pools:
            self._pools[node] = await create_pool(
                node, min_size=0, max_size=self.size, timeout=self.timeout
            )
        return self._pools[node]

    async def _node(self, dsn: str) -> str:
        if schema_of(dsn) == DEFAULT_SCHEMA:
            return dsn
        from shardflow.infra import placement  # it builds on this module

        at, node = self._nodes.get(dsn, (-placement.CHECK_SECONDS, dsn))
        if time.monotonic() - at >= placement.CHECK_SECONDS:
            node = await placement.resolve(dsn, timeout=self.timeout)
            self._nodes[dsn] = (time.monotonic(), node)
        return node

    async def close(self) -> None:
        for pool in self._pools.values():
            await close_pool(pool)
        self._pools.clear()
