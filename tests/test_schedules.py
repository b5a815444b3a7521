"""Cron schedules: tick arithmetic, the /v1/schedules API, firing through a failover,
overlap, catch-up and schedules declared in code. Real catalog, shards and coordinators."""

from __future__ import annotations

import asyncio
import itertools
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shardflow.catalog import schedules
from shardflow.cli import _register_in_catalog
from shardflow.coordinator.schedules import Scheduler
from shardflow.infra.errors import (
    InvalidScheduleError,
    ScheduleConflictError,
    ScheduleNotFoundError,
)
from shardflow.router.client import Client
from shardflow.shard.cron import ScheduleSpec, workflow_id, zone
from tests.cluster_fixtures import ADMIN_TOKEN, SHARDS, LiveCluster
from tests.test_rebalance import _spawn_coordinator
from tests.waiting import until

APP = "tests.apps.scheduled"

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# -- ticks ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cron, timezone, overlap",
    [
        ("not cron", "UTC", "skip"),
        ("* * * * * * * *", "UTC", "skip"),
        ("61 * * * *", "UTC", "skip"),
        ("* * * * *", "Mars/Olympus", "skip"),
        ("* * * * *", "", "skip"),
        ("* * * * *", "UTC", "sometimes"),
    ],
)
def test_a_bad_schedule_is_refused(cron: str, timezone: str, overlap: str) -> None:
    with pytest.raises(InvalidScheduleError):
        ScheduleSpec(cron, timezone, overlap)


def test_ticks_follow_the_schedules_time_zone_across_daylight_saving() -> None:
    daily = ScheduleSpec("0 9 * * *", "Europe/Paris")
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer (from 29 March 2026).
    assert daily.next_after(at(2026, 3, 27, 12, 0)) == at(2026, 3, 28, 8, 0)
    assert daily.next_after(at(2026, 3, 28, 12, 0)) == at(2026, 3, 29, 7, 0)


def test_after_downtime_only_the_latest_missed_tick_fires() -> None:
    every5 = ScheduleSpec("*/5 * * * *")
    missed_since = at(2026, 1, 1, 0, 0)
    assert every5.due(missed_since, at(2026, 1, 1, 3, 7, 30)) == at(2026, 1, 1, 3, 5)
    assert every5.due(at(2026, 1, 1, 3, 10), at(2026, 1, 1, 3, 7, 30)) is None  # not yet
    assert every5.due(missed_since, at(2026, 1, 1, 0, 0)) == missed_since  # on the tick


def test_a_ticks_workflow_id_is_deterministic() -> None:
    paris = datetime(2026, 6, 1, 11, 0, tzinfo=UTC).astimezone(zone("Europe/Paris"))
    assert workflow_id("nightly", paris) == "sched:nightly:20260601T110000Z"


# -- the API ----------------------------------------------------------------------------
async def test_schedules_are_created_listed_read_and_deleted_over_http(cluster: LiveCluster):
    client = await cluster.add_router()
    doc = await client.create_schedule(
        "report", "mixed", "0 6 * * 1-5", input={"x": 1}, timezone="America/New_York"
    )
    assert doc["name"] == "report" and doc["workflow"] == "mixed" and doc["source"] == "api"
    assert doc["input"] == {"x": 1} and doc["overlap"] == "skip" and doc["fired"] == 0
    first = datetime.fromisoformat(doc["next_tick"])
    assert first > datetime.now(UTC)
    assert first.astimezone(zone("America/New_York")).hour == 6
    assert [s["name"] for s in await client.schedules()] == ["report"]
    assert (await client.schedule("report"))["cron"] == "0 6 * * 1-5"
    with pytest.raises(ScheduleConflictError):
        await client.create_schedule("report", "mixed", "* * * * *")
    await client.delete_schedule("report")
    assert await client.schedules() == []
    with pytest.raises(ScheduleNotFoundError):
        await client.schedule("report")
    with pytest.raises(ScheduleNotFoundError):
        await client.delete_schedule("report")
    for impossible in ("a\x00b", "a b", "x" * 500):  # no schedule has such a name
        with pytest.raises(ScheduleNotFoundError):
            await client.schedule(impossible)
        with pytest.raises(ScheduleNotFoundError):
            await client.delete_schedule(impossible)


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"name": "a", "workflow": "mixed", "cron": "nope"}, 400, "invalid_schedule"),
        (
            {"name": "a", "workflow": "mixed", "cron": "* * * * *", "timezone": "X/Y"},
            400,
            "invalid_schedule",
        ),
        (
            {"name": "a", "workflow": "mixed", "cron": "* * * * *", "overlap": "x"},
            400,
            "invalid_schedule",
        ),
        ({"name": "a b", "workflow": "mixed", "cron": "* * * * *"}, 400, "invalid_schedule"),
        ({"name": "a", "workflow": "nope", "cron": "* * * * *"}, 422, "unknown_workflow"),
        ({"name": "a", "workflow": "mixed"}, 400, "bad_request"),
        ({"name": "a", "workflow": "mixed", "cron": 5}, 400, "bad_request"),
        ({"name": "a", "workflow": "mixed", "cron": "* * * * *", "extra": 1}, 400, "bad_request"),
        ([1, 2], 400, "bad_request"),
    ],
)
async def test_a_bad_schedule_request_gets_a_stable_error(
    cluster: LiveCluster, body: Any, status: int, code: str
) -> None:
    await cluster.add_router()
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.post(
            cluster.routers[0].url + "/v1/schedules", json=body, headers=ADMIN_HEADERS
        ) as resp:
            assert resp.status == status
            assert (await resp.json())["error"]["code"] == code
        async with http.post(
            cluster.routers[0].url + "/v1/schedules",
            data=b"{not json",
            headers={"Content-Type": "application/json", **ADMIN_HEADERS},
        ) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"
    assert await schedules.list_all(cluster.catalog) == []


# -- firing -----------------------------------------------------------------------------
async def _use_scheduled_app(cluster: LiveCluster) -> None:
    for shard_id in SHARDS:
        await cluster.executors[shard_id].shutdown()
        await cluster.start_executor(shard_id, app=APP)


async def _scheduled(cluster: LiveCluster, name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for shard_id in SHARDS:
        rows += [
            dict(r)
            for r in await cluster.fetch_on(
                shard_id,
                "SELECT id, status, created_at, finished_at FROM shardflow.workflows "
                "WHERE id LIKE $1",
                f"sched:{name}:%",
            )
        ]
    return sorted(rows, key=lambda r: r["id"])


@pytest.mark.timeout(240)
async def test_a_schedule_fires_once_per_tick_through_a_coordinator_failover(
    cluster: LiveCluster,
) -> None:
    await _use_scheduled_app(cluster)
    client = await cluster.add_router()
    await client.create_schedule("pulse", "quick", "* * * * * *", overlap="allow")
    coordinators = [_spawn_coordinator(cluster, None, f"sched-{i}") for i in range(2)]
    try:

        async def fired(n: int) -> bool:
            return int((await client.schedule("pulse"))["fired"]) >= n

        await until(lambda: fired(3), timeout=60, what="three ticks")
        leader = await cluster.catalog.pool.fetchval("SELECT owner FROM catalog.leader")
        before = int((await client.schedule("pulse"))["fired"])
        for i, proc in enumerate(coordinators):
            if leader == f"sched-{i}":
                proc.send_signal(signal.SIGKILL)
        await until(lambda: fired(before + 3), timeout=90, what="ticks after the failover")
        await client.delete_schedule("pulse")
    finally:
        for proc in coordinators:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    doc_fired = before + 3
    rows = await _scheduled(cluster, "pulse")
    ticks = [datetime.strptime(r["id"].split(":", 2)[2], "%Y%m%dT%H%M%SZ") for r in rows]
    assert len(rows) >= doc_fired
    assert ticks == sorted(set(ticks))  # one workflow per tick, never two
    for r in rows:
        await client.result(r["id"], timeout=60)


async def test_overlap_skip_passes_over_ticks_while_the_last_run_is_unfinished(
    cluster: LiveCluster,
) -> None:
    await _use_scheduled_app(cluster)
    spec = ScheduleSpec("* * * * * *", overlap="skip")
    await schedules.create(cluster.catalog, "slow", "slow_tick", spec, None)
    scheduler = Scheduler(cluster.catalog)
    try:
        deadline = asyncio.get_running_loop().time() + 7
        while asyncio.get_running_loop().time() < deadline:
            await scheduler.fire_due()
            await asyncio.sleep(0.2)
    finally:
        await scheduler.close()
    doc = await schedules.get(cluster.catalog, "slow")
    assert doc["skipped"] > 0 and doc["fired"] >= 1
    rows = await _scheduled(cluster, "slow")
    assert len(rows) == doc["fired"]
    for earlier, later in itertools.pairwise(rows):
        assert earlier["finished_at"] is not None and earlier["finished_at"] <= later["created_at"]


async def test_missed_ticks_catch_up_with_one_workflow(cluster: LiveCluster) -> None:
    await _use_scheduled_app(cluster)
    await schedules.create(cluster.catalog, "hourly", "quick", ScheduleSpec("0 * * * *"), None)
    await cluster.catalog.pool.execute(
        "UPDATE catalog.schedules SET next_tick = now() - interval '5 hours' WHERE name = 'hourly'"
    )
    scheduler = Scheduler(cluster.catalog)
    try:
        assert await scheduler.fire_due() == 1
        assert await scheduler.fire_due() == 0
    finally:
        await scheduler.close()
    doc = await schedules.get(cluster.catalog, "hourly")
    now = datetime.now(UTC)
    latest = now.replace(minute=0, second=0, microsecond=0)
    assert doc["fired"] == 1 and doc["last_tick"] == latest.isoformat()
    assert datetime.fromisoformat(doc["next_tick"]) == latest + timedelta(hours=1)
    rows = await _scheduled(cluster, "hourly")
    assert [r["id"] for r in rows] == [workflow_id("hourly", latest)]


async def test_a_schedule_declared_in_code_is_registered_once_and_fires(
    cluster: LiveCluster,
) -> None:
    await _use_scheduled_app(cluster)
    executor = cluster.executors["c0"]
    await _register_in_catalog(cluster.catalog_dsn, "c0", executor)
    first = await schedules.get(cluster.catalog, "every_second")
    await _register_in_catalog(cluster.catalog_dsn, "c1", cluster.executors["c1"])
    again = await schedules.get(cluster.catalog, "every_second")
    assert first["source"] == "code" and first["timezone"] == "Europe/Paris"
    assert again["next_tick"] == first["next_tick"]  # the same declaration keeps its place
    scheduler = Scheduler(cluster.catalog)
    client: Client = await cluster.add_router()
    try:

        async def some() -> bool:
            await scheduler.fire_due()
            return bool(await _scheduled(cluster, "every_second"))

        await until(some, timeout=30, what="a tick of the declared schedule")
    finally:
        await scheduler.close()
    (row, *_) = await _scheduled(cluster, "every_second")
    out = await client.result(row["id"], timeout=30)
    assert out["schedule"] == "every_second"
    tick = datetime.fromisoformat(out["scheduled_at"])
    assert workflow_id("every_second", tick) == row["id"]
