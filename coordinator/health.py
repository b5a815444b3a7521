"""The leader's health checks and metric samples of each shard, over one kept connection.

A new connection for every check cost the shard's Postgres 8-15 ms of CPU at once (a
backend forked and initialised, its caches loaded, its first statistics snapshot
taken), three shards at the same moment every few seconds, and the workflows in flight
on a two-core machine waited for it: their slowest requests came in bursts at the
health interval. A kept connection costs the queries alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import asyncpg

from shardflow.infra import placement
from shardflow.infra import pool as shard_pool
from shardflow.metrics.shard_stats import ShardStats, read_stats
from shardflow.shard.admin import ShardAdmin


class ShardProbe:
    """One connection per shard DSN, opened on first use and dropped on any failure or
    timeout (the next check connects again), so a shard that went away and came back
    is seen both ways."""

    def __init__(self, timeout: float = 3.0) -> None:
        self.timeout = timeout
        self._conns: dict[str, asyncpg.Connection] = {}
        self._nodes: dict[str, str] = {}  # shard DSN -> the DSN connected to (placement)

    async def sample(self, dsn: str) -> ShardStats:
        """Check the shard (it answers, with its schema version) and read its figures.
        Raises when it does not answer within the timeout."""
        try:
            return await asyncio.wait_for(self._sample(dsn), self.timeout)
        except BaseException:
            self._drop(dsn)
            raise

    async def _sample(self, dsn: str) -> ShardStats:
        conn = self._conns.get(dsn)
        if conn is not None and not conn.is_closed():
            # On Citus the figures (locks, backends) are the node's holding the schema:
            # follow it when Citus moves it (shardflow/infra/placement.py).
            node = self._nodes.get(dsn, dsn)
            if await placement.moved(conn, dsn, node) is not None:
                self._drop(dsn)
                conn = None
        if conn is None or conn.is_closed():
            node = self._nodes[dsn] = await placement.resolve(dsn, timeout=self.timeout)
            conn = self._conns[dsn] = await shard_pool.connect(node, timeout=self.timeout)
        await ShardAdmin(conn).schema_version()
        return await read_stats(conn)

    def server_pid(self, dsn: str) -> int | None:
        """The backend the checks of this shard use now (None: not connected)."""
        conn = self._conns.get(dsn)
        return None if conn is None or conn.is_closed() else conn.get_server_pid()

    def forget_others(self, dsns: Iterable[str]) -> None:
        """Close the connections to shards no longer in the cluster."""
        for dsn in set(self._conns) - set(dsns):
            self._drop(dsn)

    def _drop(self, dsn: str) -> None:
        conn = self._conns.pop(dsn, None)
        if conn is not None:
            conn.terminate()

    def close(self) -> None:
        self.forget_others(())
