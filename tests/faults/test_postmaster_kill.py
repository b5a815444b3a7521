"""SIGKILL of one shard's Postgres postmaster: `shardflow dev` reaps and restarts it;
meanwhile its slots answer 503 with Retry-After and the other shards go on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.faults.conftest import FaultCluster, alive, key_on
from tests.faults.workload import Workload, check_effects, no_internal_errors
from tests.waiting import until

W3 = {"order_id": 1, "amount": 1.0, "pad": "x"}


def _start(dev: FaultCluster, wid: str) -> tuple[int, Any, str | None]:
    """A start with no retry: its status, body and Retry-After."""
    body = json.dumps({"workflow": "w3", "input": W3, "id": wid}).encode()
    req = urllib.request.Request(
        dev.url + "/v1/workflows", data=body, method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), resp.headers.get("Retry-After")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers.get("Retry-After")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a server's backends and workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


async def test_a_killed_postmaster_is_restarted_and_nothing_is_lost(fault_dev: FaultCluster):
    load = Workload(fault_dev.url, "pm")
    await load.start(rounds=6)
    down = await key_on(fault_dev, "shard1", "down")
    up = await key_on(fault_dev, "shard0", "up")
    victim = fault_dev.postmaster("shard1")
    backends = _children(victim)
    # While the shard is down, and only then, a start must answer 503: the supervisor is
    # held (no restart yet) and the killed server's backends are waited out (a backend
    # orphaned by its postmaster's death can still serve a statement that reaches it first).
    assert fault_dev.proc is not None
    os.kill(fault_dev.proc.pid, signal.SIGSTOP)
    try:
        os.kill(victim, signal.SIGKILL)
        await until(
            lambda: asyncio.to_thread(lambda: not any(alive(p) for p in [victim, *backends])),
            what="the killed server's processes gone",
        )
        status, body, retry_after = await asyncio.to_thread(_start, fault_dev, down)
        assert (status, body["error"]["code"], retry_after) == (503, "shard_unavailable", "1")
        status, _, _ = await asyncio.to_thread(_start, fault_dev, up)
        assert status == 201  # the other shards go on
    finally:
        os.kill(fault_dev.proc.pid, signal.SIGCONT)
    await until(lambda: asyncio.to_thread(lambda: not alive(victim)), what="the postmaster reaped")
    await until(
        lambda: asyncio.to_thread(lambda: _start(fault_dev, down)[0] in (200, 201)),
        timeout=60,
        what="the shard back",
    )
    await load.decide()
    await load.finish()
    await check_effects(fault_dev.dsns(), [load])
    no_internal_errors(fault_dev.data / "logs")
    assert "event=server_restarted server=shard1" in (fault_dev.data / "dev.out").read_text()
