"""The fast path: a router that runs executors in its own process (``--executors``) runs
the starts it accepts there, answers their waits in memory, and loses nothing when it is
SIGKILLed mid-step or mid-compensation (peers in other processes recover its work)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from examples.bench import make_input
from shardflow.devcluster.launcher import free_port
from shardflow.router.client import Client
from tests.cluster_fixtures import SHARDS, LiveCluster
from tests.conftest import ROOT
from tests.samples import value
from tests.waiting import until


def _completed(registry: Any) -> float:
    return value(registry, "shardflow_workflows_completed_total")


async def test_a_router_with_executors_runs_its_starts_and_answers_in_memory(
    cluster: LiveCluster,
):
    """Peers run on every shard too: the router's own executors take its starts (the start
    statement prefers them), and a kind they do not run goes to the peers as before."""
    client = await cluster.add_router(executors=True, app=["examples.bench"])
    view = cluster.routers[0].view
    assert view is not None and view.local is not None
    local = view.local
    await until(lambda: _all_started(local.executors), what="the router's executors")
    docs = await asyncio.gather(*(client.start("w3", make_input(i), wait=30) for i in range(30)))
    assert all(
        d["status"] == "completed" and d["output"]["reserved"] == i for i, d in enumerate(docs)
    )
    ran_here = sum(_completed(e.metrics.registry) for e in local.executors.values())
    ran_by_peers = sum(_completed(e.metrics.registry) for e in cluster.executors.values())
    assert (ran_here, ran_by_peers) == (30, 0)
    taken = sum(
        value(e.metrics.registry, "shardflow_handoffs_total") for e in local.executors.values()
    )
    assert taken == 30  # each handed over in the start's answer
    # a workflow the router's executors do not run: a peer takes it, by NOTIFY
    other = await client.start("echoing", {"x": 1}, wait=30)
    assert other["status"] == "completed"

    async def by_a_peer() -> bool:
        return sum(_completed(e.metrics.registry) for e in cluster.executors.values()) == 1

    await until(by_a_peer, what="the peer's count")
    # the router's /metrics serves its executors' figures (once: no second process series)
    async with (
        aiohttp.ClientSession() as http,
        http.get(cluster.routers[0].url + "/metrics") as resp,
    ):
        text = await resp.text()
    assert 'shardflow_workflows_completed_total{outcome="completed",shard="c0"' in text
    assert text.count("# TYPE process_cpu_seconds_total") == 1


async def _all_started(executors: dict[str, Any]) -> bool:
    return len(executors) == len(SHARDS)


async def test_a_router_with_home_shards_runs_their_starts_and_leaves_the_rest_to_peers(
    cluster: LiveCluster,
):
    """``--executors-for``: the router runs an executor of its home shard only; its starts
    on that shard run here, those on the other shards are handed to their peers."""
    home, others = SHARDS[0], SHARDS[1:]
    before = {s: _completed(e.metrics.registry) for s, e in cluster.executors.items()}
    client = await cluster.add_router(executors=True, app=["examples.bench"], executors_for=[home])
    view = cluster.routers[-1].view
    assert view is not None and view.local is not None
    local = view.local
    await until(lambda: _only(local.executors, home), what="the home shard's executor")
    ids = [f"home-{i}" for i in range(30)]
    docs = await asyncio.gather(
        *(client.start("w3", make_input(i), id=wid, wait=30) for i, wid in enumerate(ids))
    )
    assert all(d["status"] == "completed" for d in docs)
    on_home = sum(cluster.shard_of(wid) == home for wid in ids)
    assert 0 < on_home < len(ids)  # the home shard got some, the others the rest
    assert _completed(local.executors[home].metrics.registry) == on_home

    async def by_peers() -> bool:  # a peer counts its completion after its answer went out
        done = sum(_completed(cluster.executors[s].metrics.registry) - before[s] for s in others)
        return done == len(ids) - on_home

    await until(by_peers, what="the peers' counts")
    assert set(local.executors) == {home}  # never one for the other shard


async def _only(executors: dict[str, Any], shard: str) -> bool:
    return set(executors) == {shard}


async def _settled_ids(cluster: LiveCluster, workflow: str) -> list[str]:
    """The IDs the dead router started, once all of them have finished: a start the
    router sent just before it died can still commit after it (its backend runs the
    statement to the end), so they are read again until no new one appears."""
    sql = f"SELECT id, status FROM shardflow.workflows WHERE id LIKE '{workflow}-%'"
    seen: list[str] = []
    for _ in range(90):
        rows = [r for shard in ("c0", "c1") for r in await cluster.fetch_on(shard, sql)]
        ids = sorted(r["id"] for r in rows)
        if ids == seen and all(r["status"] in ("completed", "failed") for r in rows):
            return ids
        seen = ids
        await asyncio.sleep(1.0)
    raise AssertionError(f"{workflow}: not all finished in 90 s: {seen}")


async def _registered(cluster: LiveCluster) -> bool:
    """Both shards have an executor besides the test's own (the router's)."""
    for shard in ("c0", "c1"):
        rows = await cluster.fetch_on(shard, "SELECT count(*) AS n FROM shardflow.executors")
        if rows[0]["n"] < 2:
            return False
    return True


class RouterProcess:
    """``shardflow router --executors`` as a process of its own (to be SIGKILLed)."""

    def __init__(self, catalog: str, log: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        args = [sys.executable, "-m", "shardflow", "router", "--catalog", catalog]
        args += ["--port", str(self.port), "--executors", "--app", "tests.apps.crash"]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                args,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def dying_router(growing: LiveCluster, tmp_path: Path) -> Iterator[RouterProcess]:
    """A router with executors whose steps (and compensations) kill it when they run."""
    router = RouterProcess(
        growing.catalog_dsn, tmp_path / "router.log", {"SHARDFLOW_TEST_KILL_IN_STEP": "1"}
    )
    yield router
    router.close()


@pytest.mark.parametrize("workflow", ["killer", "dying_compensation"])
async def test_a_router_killed_mid_step_or_mid_compensation_loses_and_repeats_nothing(
    growing: LiveCluster, dying_router: RouterProcess, workflow: str
):
    """The router's own executor takes the start, then the process dies with it (SIGKILL,
    from the step itself); the peers (executors of c0 and c1 in this process, without the
    kill) see its advisory locks free and finish the work: once."""
    async with Client(dying_router.url, retries=0) as client:

        async def up() -> bool:
            try:
                return bool(await client.cluster())
            except Exception:
                return False

        await until(up, timeout=60, what="the router")
        await until(lambda: _registered(growing), what="the router's executors")
        for i in range(4):  # the first that runs here kills the router, maybe before its answer
            try:
                await client.start(workflow, None, id=f"{workflow}-{i}")
            except Exception:
                break
    await until(lambda: asyncio.to_thread(lambda: dying_router.proc.poll() is not None), timeout=60)
    assert dying_router.proc.returncode == -signal.SIGKILL
    ids = await _settled_ids(growing, workflow)
    assert ids, "the router died before any start"
    reader = await growing.add_router()
    for wid in ids:
        doc = await reader.wait(wid, timeout=60)
        if workflow == "killer":
            assert doc["status"] == "completed" and doc["output"] == "survived", doc
        else:
            assert doc["status"] == "failed", doc
            assert doc["error"]["compensations"] == ["undo_dying"], doc
    rows = []
    for shard in ("c0", "c1"):
        rows += await growing.fetch_on(
            shard, "SELECT workflow_id FROM app_rows WHERE workflow_id LIKE $1", f"{workflow}-%"
        )
    expected = [f"{w}:undo" for w in ids] if workflow == "dying_compensation" else []
    assert sorted(r["workflow_id"] for r in rows) == sorted(expected)  # each undo once
    attempts = []
    for shard in ("c0", "c1"):
        attempts += await growing.fetch_on(
            shard, "SELECT attempt FROM shardflow.workflows WHERE id = ANY ($1)", ids
        )
    assert max(r["attempt"] for r in attempts) == 1  # recovered from the dead executor, once
    reclaimed = sum(
        value(e.metrics.registry, "shardflow_lease_reclaims_total")
        for e in growing.executors.values()
    )
    assert reclaimed >= 1
