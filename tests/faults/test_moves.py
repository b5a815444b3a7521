"""Faults during slot moves: the leading coordinator stopped (SIGSTOP) past its lease,
and a shard's Postgres restarted. The moves finish (or roll back and are planned again),
and the workload loses nothing and runs nothing twice."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.faults.conftest import LIVE_MOVES, FaultCluster, catalog_value, drain
from tests.faults.workload import Workload, check_effects, no_internal_errors
from tests.waiting import until


async def _live(dev: FaultCluster) -> bool:
    return bool(await catalog_value(dev, LIVE_MOVES))


async def _settled(dev: FaultCluster) -> bool:
    return not await _live(dev)


@pytest.mark.parametrize("fault_dev_args", [["--coordinators", "2"]])
async def test_a_leader_stopped_during_moves_is_replaced(fault_dev: FaultCluster):
    load = Workload(fault_dev.url, "ls")
    await load.start(rounds=6)
    await drain(fault_dev, "shard2")
    await until(lambda: _live(fault_dev), what="a move under way")
    leader = str(await catalog_value(fault_dev, "SELECT owner FROM catalog.leader"))
    (pid,) = fault_dev.pids("coordinator", leader)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert await _live(fault_dev), "the moves must still be under way"

        async def replaced() -> bool:
            owner = await catalog_value(fault_dev, "SELECT owner FROM catalog.leader")
            return owner not in (None, leader)

        await until(replaced, timeout=60, what="a standby to take over")
        await until(lambda: _settled(fault_dev), timeout=120, what="the moves")
    finally:
        os.kill(pid, signal.SIGCONT)
    log = fault_dev.data / "logs" / f"{leader}.log"
    await until(
        lambda: asyncio.to_thread(lambda: "event=leadership_lost" in log.read_text()),
        what="the woken leader to step down",
    )
    assert await catalog_value(fault_dev, "SELECT owner FROM catalog.leader") != leader
    slots = "SELECT count(*) FROM catalog.slots WHERE shard_id = 'shard2'"
    assert await catalog_value(fault_dev, slots) == 0
    await load.decide()
    await load.finish()
    await check_effects(fault_dev.dsns(), [load])
    no_internal_errors(fault_dev.data / "logs")


async def test_a_postgres_restart_during_moves_loses_nothing(fault_dev: FaultCluster):
    load = Workload(fault_dev.url, "pr")
    await load.start(rounds=6)
    await drain(fault_dev, "shard2")
    await until(lambda: _live(fault_dev), what="a move under way")
    postmaster = fault_dev.postmaster("shard2")
    os.kill(postmaster, signal.SIGINT)  # a fast shutdown; `shardflow dev` starts it again
    await until(lambda: _settled(fault_dev), timeout=180, what="the moves")
    await load.start(rounds=2)  # and the cluster takes new work
    await load.decide()
    await load.finish()
    await check_effects(fault_dev.dsns(), [load])
    no_internal_errors(fault_dev.data / "logs")
    assert "event=server_restarted server=shard2" in (fault_dev.data / "dev.out").read_text()
