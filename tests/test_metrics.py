"""Metrics: the documented table is current, live processes export exactly it, and a
lock held against the executors shows up in the lock metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from prometheus_client import generate_latest

from shardflow.catalog import admin as operations
from shardflow.coordinator.leader import Coordinator, CoordinatorSettings
from shardflow.devcluster.launcher import LocalPostgres
from shardflow.metrics.docs import render, rows
from tests.background import RUNNING
from tests.cluster_fixtures import SHARDS, LiveCluster
from tests.conftest import ROOT
from tests.samples import samples, value
from tests.test_rebalance import _start_load
from tests.waiting import until

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def test_docs_table_is_generated_from_the_definitions():
    assert DOCS.read_text() == render(), "run: python -m shardflow.metrics.docs > docs/metrics.md"


def _leader(cluster: LiveCluster) -> Coordinator:
    """A coordinator sampling the cluster every 0.2 s, stopped after the test."""
    settings = CoordinatorSettings.load(
        {"catalog": cluster.catalog_dsn, "health_interval": "0.2"}, env={}
    )
    coordinator = Coordinator(settings)
    stop = asyncio.Event()
    RUNNING.append((stop, asyncio.get_running_loop().create_task(coordinator.run(stop))))
    return coordinator


# Metrics this scenario cannot move without a fault of its own: each is asserted by name
# where that fault is made.
ELSEWHERE = {
    "shardflow_fenced_writes_total": "tests/test_crash.py",  # a stalled executor, fenced
    "shardflow_lease_reclaims_total": "tests/test_crash.py",  # its peer takes its workflows
    "shardflow_step_retries_total": "tests/test_engine_features.py",
    "shardflow_gc_workflows_removed_total": "tests/test_engine_features.py",
}


def _moved(kind: str, sample: float | None) -> bool:
    """A gauge has moved once it has a sample; anything else once it counted something."""
    return sample is not None and (kind == "gauge" or sample > 0)


async def _deadlock(dsn: str) -> None:
    """Two sessions locking two rows in opposite orders: Postgres aborts one of them."""
    a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        await a.execute("CREATE TABLE IF NOT EXISTS locked (id int PRIMARY KEY)")
        await a.execute("INSERT INTO locked VALUES (1), (2) ON CONFLICT DO NOTHING")

        async def cross(conn: asyncpg.Connection, first: int, second: int) -> None:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM locked WHERE id = $1 FOR UPDATE", first)
                await asyncio.sleep(0.3)
                await conn.execute("SELECT 1 FROM locked WHERE id = $1 FOR UPDATE", second)

        outcomes = await asyncio.gather(cross(a, 1, 2), cross(b, 2, 1), return_exceptions=True)
        assert any(isinstance(o, asyncpg.DeadlockDetectedError) for o in outcomes), outcomes
    finally:
        await a.close()
        await b.close()


async def test_every_documented_metric_moves(growing: LiveCluster):
    """Live processes export exactly the documented metrics, and a small scenario (a load,
    a timer, a cron schedule, a deadlock, a GC pass, a rebalance onto a third shard and a
    router with a stale slot map) moves every one of them."""
    client = await growing.add_router()
    stale = await growing.add_router(refresh_interval=3600)  # never refreshes by itself
    coordinator = _leader(growing)
    await asyncio.wait_for(coordinator.leader_event.wait(), 30)
    ids = await _start_load(client, 40, "m")
    napper = await client.start("napper", {"seconds": 0.3})  # woken by a claim
    await client.create_schedule("tick", "napper", "* * * * * *", input={"seconds": 0})
    await asyncio.gather(*(client.result(w, timeout=60) for w in [*ids, napper["id"]]))
    await _deadlock(growing.shard_dsns["c0"])
    for executor in growing.executors.values():
        await executor.collect_garbage()
    await growing.catalog.add_shard("c2", growing.shard_dsns["c2"])
    await growing.start_executor("c2", app="tests.apps.crash")
    assert await operations.rebalance(growing.catalog) > 0

    async def moved() -> bool:
        done = value(coordinator.metrics.registry, "shardflow_slot_moves_total") > 0
        return done and not (await operations.status(growing.catalog))["moves"]

    await until(moved, timeout=90, what="the rebalance")
    late = await _start_load(stale, 30, "late")  # some of their slots moved: retried
    await asyncio.gather(*(stale.result(w, timeout=60) for w in late))
    await client.delete_schedule("tick")
    kinds = {name: kind for name, kind, _, _, _ in rows()}

    async def scrape() -> dict[str, dict[str, float]]:
        exported: dict[str, dict[str, float]] = {"executor": {}, "router": {}}
        for executor in growing.executors.values():
            exported["executor"] |= samples(generate_latest(executor.metrics.registry).decode())
        async with aiohttp.ClientSession() as http:
            for router in growing.routers:
                async with http.get(router.url + "/metrics") as resp:
                    for name, v in samples(await resp.text()).items():
                        exported["router"][name] = max(v, exported["router"].get(name, v))
        exported["coordinator"] = samples(generate_latest(coordinator.metrics.registry).decode())
        return exported

    async def all_moved() -> bool:
        exported = await scrape()
        return all(
            _moved(kind, exported[owner].get(name))
            for name, kind, _, owner, _ in rows()
            if name not in ELSEWHERE
        )

    await until(all_moved, timeout=60, what="every documented metric to move")
    exported = await scrape()
    documented: dict[str, set[str]] = {"executor": set(), "router": set(), "coordinator": set()}
    for name, _kind, _labels, owner, _help in rows():
        documented[owner].add(name)
    for owner, names in exported.items():
        ours = {n for n in names if n.startswith("shardflow_")}
        assert ours <= documented[owner], ours - documented[owner]
        # the standard collectors of metrics/standard.py, on every component
        assert {"process_cpu_seconds_total", "python_gc_collections_total"} <= set(names)
    assert kinds["shardflow_pg_deadlocks_total"] == "counter"
    for name, test_file in ELSEWHERE.items():
        assert f'"{name}"' in (ROOT / test_file).read_text(), (name, test_file)


async def test_a_held_lock_moves_the_lock_metrics(growing: LiveCluster):
    client = await growing.add_router()
    coordinator = _leader(growing)
    doc = await client.start("napper", {"seconds": 0.5})
    blocker = await asyncpg.connect(growing.shard_dsns[doc["shard"]])
    try:
        async with blocker.transaction():
            await blocker.execute(
                "SELECT 1 FROM shardflow.workflows WHERE id = $1 FOR UPDATE", doc["id"]
            )

            async def waiting() -> bool:
                gauge = coordinator.metrics.lock_waits.labels(doc["shard"], "transactionid")
                return gauge._value.get() > 0

            await until(waiting, timeout=60, what="a lock wait in the metrics")
            assert coordinator.metrics.longest_lock_wait.labels(doc["shard"])._value.get() > 0
    finally:
        await blocker.close()
    assert await client.result(doc["id"], timeout=60) == "rested"


async def test_health_checks_keep_one_connection_and_see_a_shard_go_and_come_back(
    cluster: LiveCluster, pg_cluster: LocalPostgres
):
    coordinator = _leader(cluster)
    await asyncio.wait_for(coordinator.leader_event.wait(), 30)
    victim = SHARDS[1]
    dsn = cluster.shard_dsns[victim]
    up = coordinator.metrics.shard_up.labels(victim)

    async def row() -> Any:
        return await cluster.catalog.pool.fetchrow(
            "SELECT state, checked_at FROM catalog.shards WHERE id = $1", victim
        )

    async def checked_once() -> Any:
        return coordinator.probe.server_pid(dsn) and (await row())["checked_at"]

    checked = await until(checked_once, what="a first check")
    pid = coordinator.probe.server_pid(dsn)

    async def checked_again() -> bool:
        return bool((await row())["checked_at"] > checked)

    await until(checked_again, what="the next check")
    assert coordinator.probe.server_pid(dsn) == pid  # one kept backend, not one per check

    async def state_is(expected: str) -> bool:
        return bool((await row())["state"] == expected)

    pg_cluster.stop_one(victim)
    try:
        await until(lambda: state_is("down"), timeout=60, what="the shard marked down")
        assert up._value.get() == 0
        assert coordinator.probe.server_pid(dsn) is None
    finally:
        pg_cluster.restart_one(victim)
    await until(lambda: state_is("active"), timeout=60, what="the shard marked active again")
    assert up._value.get() == 1
    assert coordinator.probe.server_pid(dsn) not in (None, pid)
