"""Concurrency limits: per shard (claims take turns and count), cluster-wide (the
coordinator's shares), never exceeded while sampled, never holding up other workflows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from shardflow.cli import _register_in_catalog
from shardflow.coordinator.limits import Demand, Limiter, fair_split, new_shares
from shardflow.infra.errors import SettingsError
from shardflow.shard.client import ShardClient
from shardflow.shard.sdk import workflow
from tests.cluster_fixtures import SHARDS, LiveCluster

APP = "tests.apps.limited"
RUNNING = "SELECT count(*) FROM shardflow.workflows WHERE status = 'running' AND name = $1"


async def peak_while(
    count: Callable[[], Awaitable[int]], work: Awaitable[Any], every: float = 0.01
) -> int:
    """The highest value of ``count()`` sampled until ``work`` is done."""
    task = asyncio.ensure_future(work)
    peak = 0
    while not task.done():
        peak = max(peak, await count())
        await asyncio.sleep(every)
    await task
    return peak


async def test_a_per_shard_limit_holds_across_executors(
    client: ShardClient, start_executor: Any
) -> None:
    for _ in range(2):  # two executors on the shard: their claims must take turns
        await start_executor(app=[APP], concurrency=8)
    ids = [await client.start("per_shard_limited", {"s": 0.2}) for _ in range(8)]
    free = await client.start("free", {"s": 0})

    async def all_done() -> None:
        assert await client.result(free, timeout=30) == "held"
        early = await client.pool.fetchval(
            "SELECT count(*) FROM shardflow.workflows WHERE id = ANY($1) AND status = 'completed'",
            ids,
        )
        assert early < len(ids)  # the free workflow did not wait behind the limited ones
        for wid in ids:
            assert await client.result(wid, timeout=60) == "held"

    async def running() -> int:
        return int(await client.pool.fetchval(RUNNING, "per_shard_limited"))

    assert await peak_while(running, all_done()) == 2


async def test_a_cluster_limit_holds_on_a_standalone_shard(
    client: ShardClient, start_executor: Any
) -> None:
    await start_executor(app=[APP], concurrency=8)
    ids = [await client.start("cluster_limited", {"s": 0.15}) for _ in range(8)]

    async def all_done() -> None:
        for wid in ids:
            await client.result(wid, timeout=60)

    async def running() -> int:
        return int(await client.pool.fetchval(RUNNING, "cluster_limited"))

    assert await peak_while(running, all_done()) == 3


def _ids_per_shard(cluster: LiveCluster, n: int) -> list[str]:
    """IDs of which ``n`` land on each shard of the cluster."""
    ids: dict[str, list[str]] = {s: [] for s in SHARDS}
    i = 0
    while any(len(v) < n for v in ids.values()):
        wid = f"limited-{i}"
        group = ids[cluster.shard_of(wid)]
        if len(group) < n:
            group.append(wid)
        i += 1
    return [wid for group in ids.values() for wid in group]


@pytest.mark.timeout(180)
async def test_a_cluster_limit_holds_across_shards(cluster: LiveCluster) -> None:
    for shard_id in SHARDS:
        await cluster.executors[shard_id].shutdown()
        executor = await cluster.start_executor(shard_id, app=APP)
        await _register_in_catalog(cluster.catalog_dsn, shard_id, executor)
    client = await cluster.add_router()
    limiter = Limiter(cluster.catalog)
    conns = [await asyncpg.connect(cluster.shard_dsns[s]) for s in SHARDS]
    stop = asyncio.Event()

    async def share() -> None:
        while not stop.is_set():
            await limiter.share_out()
            await asyncio.sleep(0.05)

    sharing = asyncio.create_task(share())
    try:
        # five on each shard (15 random IDs missed one shard 1 time in about 140)
        ids = _ids_per_shard(cluster, 5)
        docs = [await client.start("cluster_limited", {"s": 0.15}, id=wid) for wid in ids]
        assert sorted(d["shard"] for d in docs) == sorted(SHARDS * 5)

        async def all_done() -> None:
            for d in docs:
                assert await client.result(d["id"], timeout=90) == "held"

        async def running() -> int:
            return sum([int(await c.fetchval(RUNNING, "cluster_limited")) for c in conns])

        peak = await peak_while(running, all_done())
        assert 1 <= peak <= 3
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await sharing
        await limiter.close()
        for c in conns:
            await c.close()


def test_shares_never_give_out_more_than_the_limit() -> None:
    assert fair_split(3, [5, 5, 5]) == [1, 1, 1]
    assert fair_split(10, [1, 20, 0]) == [1, 9, 0]
    fresh = [Demand("a", 0, 0, 5), Demand("b", 0, 0, 5), Demand("c", 0, 0, 5)]
    assert new_shares(3, fresh) == [1, 1, 1]
    # a still runs 3 after its share is lowered: nothing is given to b and c until it drops
    busy = [Demand("a", 3, 3, 5), Demand("b", 0, 0, 5), Demand("c", 0, 0, 5)]
    assert new_shares(3, busy) == [1, 0, 0]
    drained = [Demand("a", 1, 1, 5), Demand("b", 0, 0, 5), Demand("c", 0, 0, 5)]
    assert new_shares(3, drained) == [1, 1, 1]


@pytest.mark.parametrize("cap", [0, -1, 1.5, True, "2"])
def test_a_limit_must_be_a_positive_whole_number(cap: Any) -> None:
    with pytest.raises(SettingsError):
        workflow(name="x", max_running=cap)
    with pytest.raises(SettingsError):
        workflow(name="x", max_running_per_shard=cap)


async def test_a_shard_marked_down_keeps_its_share_taken(cluster: LiveCluster) -> None:
    """A shard the coordinator cannot reach may go on running up to the share it was
    given: that share stays taken, so the others never get more than what is left."""
    for shard_id in SHARDS:
        await cluster.executors[shard_id].shutdown()
        executor = await cluster.start_executor(shard_id, app=APP)
        await _register_in_catalog(cluster.catalog_dsn, shard_id, executor)
        await executor.shutdown()  # nothing runs: the demand stays queued
    client = await cluster.add_router()
    for wid in _ids_per_shard(cluster, 2):
        await client.start("cluster_limited", {"s": 0.1}, id=wid)
    limiter = Limiter(cluster.catalog)
    conns = {s: await asyncpg.connect(cluster.shard_dsns[s]) for s in SHARDS}
    share_sql = "SELECT coalesce(share, 0) FROM shardflow.limits WHERE name = 'cluster_limited'"
    try:
        await limiter.share_out()
        down = SHARDS[0]
        held = int(await conns[down].fetchval(share_sql))
        assert held >= 1
        await cluster.catalog.shard_set_state(down, "down")
        for _ in range(2):
            await limiter.share_out()
        others = [int(await conns[s].fetchval(share_sql)) for s in SHARDS if s != down]
        assert held + sum(others) <= 3
        await cluster.catalog.shard_set_state(down, "active")  # back: shares follow demand
        await limiter.share_out()
        assert sum([int(await c.fetchval(share_sql)) for c in conns.values()]) <= 3
    finally:
        await limiter.close()
        for c in conns.values():
            await c.close()
