"""Metrics: the documented table is current, live processes export exactly it, and a
lock held against the executors shows up in the lock metrics."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from prometheus_client import generate_latest

from shardflow.coordinator.leader import Coordinator, CoordinatorSettings
from shardflow.devcluster.launcher import LocalPostgres
from shardflow.metrics.docs import render, rows
from tests.background import RUNNING
from tests.cluster_fixtures import SHARDS, LiveCluster
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


def _families(text: str) -> set[str]:
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names.add(name + "_total" if kind == "counter" and not name.endswith("_total") else name)
    return names


async def test_live_processes_export_exactly_the_documented_metrics(growing: LiveCluster):
    client = await growing.add_router()
    coordinator = _leader(growing)
    ids = await _start_load(client, 50, "m")
    await asyncio.gather(*(client.result(w, timeout=60) for w in ids))
    await asyncio.wait_for(coordinator.leader_event.wait(), 30)

    async def sampled() -> bool:
        text = generate_latest(coordinator.metrics.registry).decode()
        return "shardflow_queue_depth{" in text and "shardflow_pg_dead_tuples{" in text

    await until(sampled, what="the leader's first cluster sample")
    async with (
        aiohttp.ClientSession() as http,
        http.get(growing.routers[0].url + "/metrics") as resp,
    ):
        router_text = await resp.text()
    exported = {
        "executor": _families(generate_latest(growing.executors["c0"].metrics.registry).decode()),
        "router": _families(router_text),
        "coordinator": _families(generate_latest(coordinator.metrics.registry).decode()),
    }
    documented: dict[str, set[str]] = {"executor": set(), "router": set(), "coordinator": set()}
    for name, _kind, _labels, owner, _help in rows():
        documented[owner].add(name)
    assert exported == documented


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
