"""Figures read from a shard's own tables and from pg_locks / pg_stat_* (by the coordinator)."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from shardflow.infra.sqlfiles import named_queries


@dataclass
class ShardStats:
    queue: dict[str, int] = field(default_factory=dict)
    ready_now: int = 0
    oldest_ready_s: float = 0.0
    lock_waits: dict[str, int] = field(default_factory=dict)
    longest_lock_wait_s: float = 0.0
    deadlocks: int = 0
    dead_tuples: dict[str, int] = field(default_factory=dict)
    oldest_transaction_s: float = 0.0


async def read_stats(conn: asyncpg.Connection | asyncpg.Pool) -> ShardStats:
    q = named_queries("shardflow.metrics", "shard_stats.sql")
    stats = ShardStats()
    stats.queue = {r["status"]: r["n"] for r in await conn.fetch(q["queue_depth"])}
    row = await conn.fetchrow(q["ready_now"])
    if row is not None:
        stats.ready_now, stats.oldest_ready_s = row["n"], row["oldest_s"]
    stats.lock_waits = {r["locktype"]: r["n"] for r in await conn.fetch(q["lock_waits"])}
    stats.longest_lock_wait_s = float(await conn.fetchval(q["longest_lock_wait"]))
    row = await conn.fetchrow(q["database_stats"])
    if row is not None:
        stats.deadlocks = row["deadlocks"]
    stats.dead_tuples = {r["relname"]: r["n"] for r in await conn.fetch(q["dead_tuples"])}
    stats.oldest_transaction_s = float(await conn.fetchval(q["oldest_transaction"]))
    return stats
