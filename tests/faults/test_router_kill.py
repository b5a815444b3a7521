"""SIGKILL of routers behind haproxy while starts wait for their outcome (?wait=): the
clients retry through haproxy with the same IDs, and every workflow runs exactly once."""

from __future__ import annotations

import asyncio
import os
import signal

import asyncpg
import pytest

from examples.bench import make_input
from shardflow.router.client import Client
from tests.faults.conftest import FaultCluster, alive
from tests.faults.workload import (
    BACKOFF,
    RETRIES,
    Workload,
    check_effects,
    no_internal_errors,
)
from tests.waiting import until

STARTS = 120


@pytest.mark.parametrize("fault_dev_args", [["--routers", "2", "--haproxy"]])
async def test_routers_killed_behind_haproxy_run_each_start_once(fault_dev: FaultCluster):
    done: list[str] = []
    async with Client(fault_dev.url, retries=RETRIES, backoff=BACKOFF) as client:

        async def run(i: int) -> None:
            out = await client.run("w3", make_input(i), id=f"rk-{i}", timeout=120)
            assert out["reserved"] == i
            done.append(f"rk-{i}")

        load = Workload(fault_dev.url, "rkmix")  # the mixed workload, through the kills too
        runs = asyncio.gather(*(run(i) for i in range(STARTS)), load.start(rounds=4))
        for kill in range(2):  # each router once, the second after the first came back

            async def progress(k: int = kill) -> bool:
                return len(done) > k * STARTS // 3 or runs.done()

            await until(progress, what="runs to finish")
            routers = sorted(fault_dev.pids("router"))
            assert len(routers) == 2
            victim = routers[0]
            os.kill(victim, signal.SIGKILL)
            await until(
                lambda v=victim: asyncio.to_thread(
                    lambda: not alive(v) and len(fault_dev.pids("router")) == 2
                ),
                what="the router restarted",
            )
        await runs
    assert sorted(done) == sorted(f"rk-{i}" for i in range(STARTS))
    total = 0
    for dsn in fault_dev.dsns():
        conn = await asyncpg.connect(dsn)
        try:
            sql = "SELECT count(*) FROM shardflow.workflows WHERE id LIKE 'rk-%'"
            total += await conn.fetchval(sql)
        finally:
            await conn.close()
    assert total == STARTS
    assert "child_exited child=router-" in (fault_dev.data / "dev.out").read_text()
    await load.decide()
    await load.finish()
    await check_effects(fault_dev.dsns(), [load])
    no_internal_errors(fault_dev.data / "logs")
