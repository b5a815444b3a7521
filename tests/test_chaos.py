"""One big chaos run: 5,000 workflows while the cluster grows from 2 to 3 shards, with
the leading coordinator, an executor, both router processes and the source shard's
Postgres killed on the way (each router is started again on its port, as a supervisor
would; clients retry with the same IDs)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp

from shardflow.catalog import admin as operations
from shardflow.devcluster.launcher import LocalPostgres, free_port
from shardflow.router.client import Client
from tests.cluster_fixtures import LiveCluster
from tests.conftest import ROOT, ExecutorProcess
from tests.test_rebalance import _check_cluster, _spawn_coordinator, _start_load
from tests.waiting import until

TOTAL = 5000
BATCH = 250


async def _start_retrying(client: Client, n: int, prefix: str) -> list[str]:
    """Start a batch, retrying the items a down shard refused (same IDs: exactly once)."""
    pending = {
        f"{prefix}-{i}": {"workflow": "crashy", "input": {"n": i}, "id": f"{prefix}-{i}"}
        for i in range(n)
    }
    for _ in range(100):
        results = await client.start_many(list(pending.values()))
        for item, result in zip(list(pending), results, strict=True):
            if "error" not in result:
                del pending[item]
            else:
                assert result["error"]["code"] == "shard_unavailable", result
        if not pending:
            return [f"{prefix}-{i}" for i in range(n)]
        await asyncio.sleep(0.2)
    raise AssertionError("starts kept failing")


def _router_process(catalog: str, port: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "shardflow", "router", "--catalog", catalog]
    return subprocess.Popen(
        [*args, "--port", str(port), "--refresh-interval", "0.2"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _answers(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def test_chaos_grow_under_load_with_kills(
    growing: LiveCluster, pg_cluster: LocalPostgres, tmp_path: Any
):
    rng = random.Random(20261125)
    began = time.monotonic()
    ports = [free_port(), free_port()]
    routers = [_router_process(growing.catalog_dsn, p) for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    for url in urls:
        await until(lambda u=url: _answers(u), what="a router process")
    clients = [Client(url, retries=40, backoff=0.05) for url in urls]
    client = clients[0]
    kills = 0
    victim_executor = ExecutorProcess(
        growing.shard_dsns["c0"], "tests.apps.crash", shard="c0", maintenance_interval=0.1
    )
    coordinators = [_spawn_coordinator(growing, None, f"coord-{i}") for i in range(2)]
    ids: list[str] = []
    try:
        ids += await _start_load(client, 1000, "warm")
        await growing.catalog.add_shard("c2", growing.shard_dsns["c2"])
        await growing.start_executor("c2", app="tests.apps.crash")
        planned = await operations.rebalance(growing.catalog)
        assert planned > 0

        async def load() -> None:
            for b in range((TOTAL - 1000) // BATCH):
                ids.extend(await _start_retrying(clients[b % 2], BATCH, f"load{b}"))
                await asyncio.sleep(rng.uniform(0, 0.2))

        async def chaos() -> None:
            await asyncio.sleep(rng.uniform(0.2, 1.0))

            async def elected() -> str | None:
                sql = "SELECT nullif(owner, '') FROM catalog.leader"
                return await growing.catalog.pool.fetchval(sql)

            nonlocal kills
            for i in range(2):  # each router process, killed and started again on its port
                routers[i].send_signal(signal.SIGKILL)
                routers[i].wait()
                kills += 1
                await asyncio.sleep(rng.uniform(0.1, 0.5))
                routers[i] = _router_process(growing.catalog_dsn, ports[i])
                await until(lambda u=urls[i]: _answers(u), what="the router back")
            leader = await until(elected, timeout=60, what="a leader to kill")
            for i, proc in enumerate(coordinators):
                if leader == f"coord-{i}":
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            victim_executor.signal(signal.SIGKILL)
            kills += 1
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            pg_cluster.stop_one("c0", mode="immediate")  # the source shard crashes ...
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            pg_cluster.restart_one("c0")  # ... and comes back
            kills += 1

        await asyncio.gather(load(), chaos())

        async def finished() -> bool:
            return not (await operations.status(growing.catalog))["moves"]

        await until(finished, timeout=300, what="every move")
        assert len(ids) == TOTAL
        for start in range(0, TOTAL, 500):
            chunk = ids[start : start + 500]
            results = await asyncio.gather(*(client.result(w, timeout=300) for w in chunk))
            assert all(r["rows"] == 1 for r in results)
        await _check_cluster(growing, ids)  # none lost, none twice (rows and app effects)
        print(
            f"\nchaos: {len(ids)} workflows, {kills} kills, lost 0, duplicated 0, "
            f"{time.monotonic() - began:.1f} s from the first start to the last result"
        )
        status = await operations.status(growing.catalog)
        assert sorted(s["slots"] for s in status["shards"]) == [21, 21, 22]
        assert status["leader"]["owner"] != "" and int(status["leader"]["term"]) >= 2
    finally:
        for c in clients:
            await c.close()
        for proc in routers:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        victim_executor.close()
        for proc in coordinators:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
