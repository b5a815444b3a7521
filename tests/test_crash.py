"""Crash tests with real executor processes killed with SIGKILL or stopped with SIGSTOP."""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shardflow.devcluster.launcher import LocalPostgres, free_port
from shardflow.infra.errors import ShardUnavailableError, WorkflowFailedError
from shardflow.shard.client import ShardClient, StartRequest
from tests.conftest import ExecutorProcess
from tests.samples import samples
from tests.waiting import status_becomes, until

N = 120


async def _exited(proc: ExecutorProcess) -> bool:
    return proc.proc.poll() is not None


async def _check_exactly_once(conn: asyncpg.Connection, ids: list[str]) -> None:
    statuses = await conn.fetch("SELECT status, count(*) FROM shardflow.workflows GROUP BY 1")
    assert {r["status"]: r["count"] for r in statuses} == {"completed": len(ids)}
    per_wf = await conn.fetch("SELECT workflow_id, count(*) AS n FROM app_rows GROUP BY 1")
    assert len(per_wf) == len(ids) and all(r["n"] == 1 for r in per_wf), "app row not once"
    steps = await conn.fetch(
        "SELECT workflow_id, array_agg(name ORDER BY seq) AS names FROM shardflow.steps GROUP BY 1"
    )
    assert len(steps) == len(ids)
    assert all(r["names"] == ["plain", "insert_app_row", "plain"] for r in steps)


@pytest.mark.parametrize(
    "fault",
    [
        "before_checkpoint_commit=kill@2",
        "after_checkpoint_commit=kill@2",
        "before_step_commit=kill@10",
        "after_step_commit=kill@10",
    ],
)
async def test_sigkill_at_fault_point_loses_and_repeats_nothing(
    dsn: str, client: ShardClient, spawn_executor: Any, fault: str
):
    async with client.pool.acquire() as conn:
        await conn.execute("CREATE TABLE app_rows (workflow_id text NOT NULL)")
    victim = spawn_executor("tests.apps.crash", env={"SHARDFLOW_FAULTS": fault})
    async with client.pool.acquire() as conn:
        await until(
            lambda: conn.fetchval("SELECT count(*) FROM shardflow.registry"), what="registry"
        )
    results = await client.start_many([StartRequest("crashy", {"n": i}) for i in range(N)])
    await until(lambda: _exited(victim), what="the victim to hit its fault point")
    assert victim.proc.returncode == -signal.SIGKILL
    spawn_executor("tests.apps.crash")
    ids = [r.id for r in results]
    for wid in ids:
        await client.result(wid, timeout=60)
    async with client.pool.acquire() as conn:
        await _check_exactly_once(conn, ids)
        assert await conn.fetchval("SELECT max(attempt) FROM shardflow.workflows") == 1


async def _metric(port: int, name: str) -> float:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    return samples(await asyncio.to_thread(fetch)).get(name, 0.0)


async def _stopped(proc: ExecutorProcess) -> bool:
    status = await asyncio.to_thread(Path(f"/proc/{proc.pid}/status").read_text)
    return "State:\tT" in status


async def test_stalled_executor_is_fenced_after_its_lease(client: ShardClient, spawn_executor: Any):
    port = free_port()
    # The executor stops itself (SIGSTOP) right after its first claim, holding leases.
    stalled = spawn_executor(
        "tests.apps.crash",
        env={"SHARDFLOW_FAULTS": "after_claim=stop@1"},
        lease_seconds=1.5,
        metrics_port=port,
    )
    async with client.pool.acquire() as conn:
        await conn.execute("CREATE TABLE app_rows (workflow_id text NOT NULL)")
        await until(
            lambda: conn.fetchval("SELECT count(*) FROM shardflow.registry"), what="registry"
        )
        results = await client.start_many([StartRequest("crashy", {"n": i}) for i in range(20)])
        await until(lambda: _stopped(stalled), what="the executor to stall after claiming")
        held = await conn.fetchval(
            "SELECT count(*) FROM shardflow.workflows WHERE status = 'running'"
        )
        assert held > 0
        peer = free_port()
        spawn_executor("tests.apps.crash", lease_seconds=1.5, metrics_port=peer)
        ids = [r.id for r in results]
        for wid in ids:
            await client.result(wid, timeout=60)
        assert await _metric(peer, "shardflow_lease_reclaims_total") >= held
        stalled.signal(signal.SIGCONT)
        await until(lambda: _metric(port, "shardflow_fenced_writes_total"), what="fenced writes")
        await _check_exactly_once(conn, ids)
        assert await conn.fetchval("SELECT max(attempt) FROM shardflow.workflows") == 1
    assert "event=fenced_write" in stalled.output()


async def _crash_until_failed(client: ShardClient, spawn_executor: Any, workflow: str) -> Any:
    """Start ``workflow`` (whose step kills its executor) and replace each executor it
    kills (recovery limit 2) until it is failed; its final status document."""
    env = {"SHARDFLOW_TEST_KILL_IN_STEP": "1"}
    current = spawn_executor("tests.apps.crash", env=env, max_recovery_attempts=2)
    async with client.pool.acquire() as conn:
        await until(
            lambda: conn.fetchval("SELECT count(*) FROM shardflow.registry"), what="registry"
        )
    wid = await client.start(workflow, None)
    for _ in range(6):
        await until(lambda p=current: _settled(client, wid, p), what="a crash or the failure")
        if (await client.status(wid))["status"] == "failed":
            break
        current = spawn_executor("tests.apps.crash", env=env, max_recovery_attempts=2)
    return await _final(client, wid)


async def test_crash_looping_workflow_fails_after_max_recoveries(
    client: ShardClient, spawn_executor: Any
):
    doc = await _crash_until_failed(client, spawn_executor, "killer")
    assert doc["status"] == "failed"
    assert doc["error"]["type"] == "RecoveryLimitExceeded" and doc["attempt"] == 3


async def test_the_recovery_limit_runs_the_compensations_once(
    client: ShardClient, spawn_executor: Any
):
    """A workflow failed for crashing its executors too often is failed by a replay that
    stops at its first new call, so its compensations run (once) like on any failure."""
    async with client.pool.acquire() as conn:
        await conn.execute("CREATE TABLE app_rows (workflow_id text NOT NULL)")
    doc = await _crash_until_failed(client, spawn_executor, "killer_saga")
    wid = doc["id"]
    assert doc["error"]["type"] == "RecoveryLimitExceeded"
    assert doc["compensations"] == ["unreserve_row"]
    async with client.pool.acquire() as conn:
        undone = await conn.fetchval(
            "SELECT count(*) FROM app_rows WHERE workflow_id = $1", f"{wid}:undo"
        )
    assert undone == 1


async def test_step_retries_are_bounded_across_crashes(
    client: ShardClient, spawn_executor: Any, dsn: str
):
    """Failed attempts are recorded: an executor killed during attempt 3 of a step with
    retries=3 leaves 2 counted, and its successor makes attempts 3 and 4 only. (The killed
    attempt counts against the workflow's recovery limit, not the step's retries; before
    this, the successor started over and made 4 more.)"""
    async with client.pool.acquire() as conn:
        await conn.execute("CREATE TABLE attempt_log (workflow_id text NOT NULL)")
    env = {"SHARDFLOW_TEST_ATTEMPTS_DSN": dsn, "SHARDFLOW_TEST_KILL_AT_ATTEMPT": "3"}
    first = spawn_executor("tests.apps.crash", env=env)
    async with client.pool.acquire() as conn:
        await until(
            lambda: conn.fetchval("SELECT count(*) FROM shardflow.registry"), what="registry"
        )
    wid = await client.start("retries_across_crashes", None)
    await until(lambda: asyncio.to_thread(first.proc.poll), what="the kill at attempt 3")
    spawn_executor("tests.apps.crash", env={"SHARDFLOW_TEST_ATTEMPTS_DSN": dsn})
    with pytest.raises(WorkflowFailedError):
        await client.result(wid, timeout=60)
    (step,) = (await client.status(wid))["steps"]
    assert (step["status"], step["attempts"]) == ("failed", 4)
    async with client.pool.acquire() as conn:
        made = await conn.fetchval("SELECT count(*) FROM attempt_log WHERE workflow_id = $1", wid)
    assert made == 5  # 1, 2, the killed one, then 3 and 4


async def _settled(client: ShardClient, wid: str, proc: ExecutorProcess) -> bool:
    return proc.proc.poll() is not None or (await client.status(wid))["status"] == "failed"


async def _final(client: ShardClient, wid: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        doc = await client.status(wid)
        return doc if doc["status"] in ("failed", "completed") else None

    result: dict[str, Any] = await until(done, what="the workflow to end")
    return result


async def test_executor_survives_postgres_restart(
    pg_cluster: LocalPostgres, client: ShardClient, start_executor: Any, dsn: str
):
    await start_executor(app=["tests.apps.crash"], maintenance_interval=0.1)
    async with client.pool.acquire() as conn:
        await conn.execute("CREATE TABLE app_rows (workflow_id text NOT NULL)")
    results = await client.start_many([StartRequest("crashy", {"n": i}) for i in range(200)])
    pg_cluster.restart_one("shard0")  # blocks the loop (and the executor) briefly
    batch = [StartRequest("crashy", {"n": i}, id=f"after-{i}") for i in range(50)]
    for _ in range(5):  # pooled connections died with the server: a clear, retryable error
        try:
            more = await client.start_many(batch)  # idempotent by ID, so safe to retry
            break
        except ShardUnavailableError:
            continue
    ids = [r.id for r in results + more]
    for wid in ids:
        await client.result(wid, timeout=60)
    async with client.pool.acquire() as conn:
        await _check_exactly_once(conn, ids)


async def test_sigterm_releases_leases_for_another_executor(
    client: ShardClient, spawn_executor: Any
):
    first = spawn_executor("tests.apps.crash", shutdown_grace=0.2)
    async with client.pool.acquire() as conn:
        await until(
            lambda: conn.fetchval("SELECT count(*) FROM shardflow.registry"), what="registry"
        )
        results = await client.start_many(
            [StartRequest("slow", {"steps": 5, "seconds": 0.2}) for _ in range(30)]
        )
        await until(
            lambda: conn.fetchval("SELECT count(*) FROM shardflow.steps"), what="some progress"
        )
        first.signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.proc.wait, 30) == 0
        running = await conn.fetchval(
            "SELECT count(*) FROM shardflow.workflows WHERE status = 'running'"
        )
        assert running == 0, "a stopped executor keeps no lease"
        assert await conn.fetchval("SELECT count(*) FROM shardflow.executors") == 0
        spawn_executor("tests.apps.crash")
        for r in results:
            assert await client.result(r.id, timeout=60) == 5
        assert await conn.fetchval("SELECT max(attempt) FROM shardflow.workflows") == 0
        assert await conn.fetchval("SELECT count(*) FROM shardflow.steps") == 150


async def test_sigkill_while_workflows_sleep_and_wait_loses_neither(
    client: ShardClient, spawn_executor: Any
):
    victim = spawn_executor("tests.apps.crash")
    async with client.pool.acquire() as conn:
        await until(
            lambda: conn.fetchval("SELECT count(*) FROM shardflow.registry"), what="registry"
        )
    napper = await client.start("napper", {"seconds": 2})
    waiter = await client.start("waiter", None)
    await status_becomes(client, napper, "sleeping")
    await status_becomes(client, waiter, "waiting")
    victim.signal(signal.SIGKILL)
    await until(lambda: _exited(victim), what="the victim to die")
    assert await client.send_event(waiter, "go", {"ok": 1})  # kept while no executor runs
    spawn_executor("tests.apps.crash")
    assert await client.result(napper, timeout=60) == "rested"
    assert await client.result(waiter, timeout=60) == {"ok": 1}
    async with client.pool.acquire() as conn:
        for wid in (napper, waiter):
            names = await conn.fetchval(
                "SELECT array_agg(name ORDER BY seq) FROM shardflow.steps WHERE workflow_id = $1",
                wid,
            )
            assert len(names) == len(set(names)), names  # each recorded once
            assert names[-1] == "plain"
