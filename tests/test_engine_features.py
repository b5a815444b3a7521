"""Retries, timeouts, recorded values, timers, events, cancellation, replay and GC."""

from __future__ import annotations

from typing import Any

import pytest

from examples.bench import make_input
from shardflow import (
    Context,
    ShardClient,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowFinishedError,
    WorkflowNotFoundError,
)
from shardflow.shard.sdk import Registry, step, workflow
from tests.apps import basic
from tests.samples import value
from tests.waiting import status_becomes


async def test_step_retries_until_it_succeeds(client: ShardClient, start_executor: Any):
    executor = await start_executor()
    wid = await client.start("retrying", {"key": "r1", "fail_times": 2})
    assert await client.result(wid, timeout=30) == {"attempts": 3}
    assert value(executor.metrics.registry, "shardflow_step_retries_total") == 2
    (row,) = (await client.status(wid))["steps"]
    assert row["attempts"] == 3 and row["status"] == "completed"


async def test_step_fails_once_retries_are_exhausted(client: ShardClient, start_executor: Any):
    await start_executor()
    wid = await client.start("retrying", {"key": "r2", "fail_times": 10})
    with pytest.raises(WorkflowFailedError) as info:
        await client.result(wid, timeout=30)
    assert "flaky failure 3" in info.value.error["message"]
    (row,) = (await client.status(wid))["steps"]
    assert row["status"] == "failed" and row["attempts"] == 3
    assert row["error"]["type"] == "RuntimeError" and "flaky" in row["error"]["traceback"]


async def test_workflow_can_catch_a_failed_step(client: ShardClient, start_executor: Any):
    await start_executor()
    wid = await client.start("catching", None)
    assert await client.result(wid, timeout=30) == "caught StepFailedError"


async def test_step_timeout_is_a_failed_attempt(client: ShardClient, start_executor: Any):
    await start_executor()
    wid = await client.start("timing_out_step", None)
    with pytest.raises(WorkflowFailedError):
        await client.result(wid, timeout=30)
    (row,) = (await client.status(wid))["steps"]
    assert row["error"]["type"] == "StepTimeoutError" and row["attempts"] == 2


async def test_unserialisable_step_result_fails_at_the_call_site(
    client: ShardClient, start_executor: Any
):
    await start_executor()
    wid = await client.start("bad_output", None)
    with pytest.raises(WorkflowFailedError) as info:
        await client.result(wid, timeout=30)
    assert info.value.error["type"] == "SerializationError"
    assert "result of step bad_result" in info.value.error["message"]
    assert (await client.status(wid))["steps"] == []


async def test_sync_transactional_parallel_and_recorded_values(
    client: ShardClient, start_executor: Any
):
    await start_executor()
    wid = await client.start("mixed", {"a": 2, "b": 3})
    out = await client.result(wid, timeout=30)
    assert out["total"] == 5 and out["rows"] == 1 and out["pair"] == ["left", "right"]
    names = [s["name"] for s in (await client.status(wid))["steps"]]
    assert names == [
        "blocking_add",
        "record_row",
        "echo",
        "echo",
        "ctx.now",
        "ctx.uuid",
        "ctx.random",
    ]


async def test_sleep_suspends_and_replays_recorded_values(client: ShardClient, start_executor: Any):
    executor = await start_executor()
    wid = await client.start("sleeper", {"seconds": 0.3})
    out = await client.result(wid, timeout=30)
    steps = (await client.status(wid))["steps"]
    assert [s["name"] for s in steps] == ["ctx.uuid", "ctx.sleep", "echo"]
    assert out["token"] == steps[0]["output"], "the uuid was replayed, not drawn again"
    assert executor.metrics.workflows_started.labels("0", "sleeper")._value.get() == 1


async def test_sleeping_workflow_is_not_held_in_memory_and_cancels(
    client: ShardClient, start_executor: Any
):
    executor = await start_executor()
    wid = await client.start("long_sleep", None)
    await status_becomes(client, wid, "sleeping")
    assert wid not in executor._inflight
    assert (await client.status(wid))["wake_at"] is not None
    await client.cancel(wid)
    with pytest.raises(WorkflowCancelledError):
        await client.result(wid, timeout=30)
    assert (await client.status(wid))["status"] == "cancelled"


async def test_cancel_before_any_executor_runs_it(client: ShardClient):
    async with client.pool.acquire() as conn:
        await conn.execute("INSERT INTO shardflow.registry (name, version) VALUES ('w3', '1')")
    wid = await client.start("w3", make_input(1), id="never-run")
    assert await client.cancel(wid) == "cancelled"
    with pytest.raises(WorkflowCancelledError):
        await client.result(wid, timeout=30)
    async with client.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM shardflow.ready") == 0


async def test_event_after_and_before_the_wait(client: ShardClient, start_executor: Any):
    await start_executor()
    waiting = await client.start("approval", {})
    await status_becomes(client, waiting, "waiting")
    assert await client.send_event(waiting, "approved", {"ok": True})
    assert (await client.result(waiting, timeout=30))["payload"] == {"ok": True}

    early = await client.start("approval", {}, id="early")
    assert await client.send_event(early, "approved", {"ok": "early"})
    assert (await client.result(early, timeout=30))["payload"] == {"ok": "early"}


async def test_event_dedup_and_errors(client: ShardClient, start_executor: Any):
    await start_executor()
    wid = await client.start("approval", {"twice": True})
    assert await client.send_event(wid, "approved", 1, dedup_id="a")
    assert not await client.send_event(wid, "approved", 1, dedup_id="a")
    assert await client.send_event(wid, "approved", 2, dedup_id="b")
    assert await client.result(wid, timeout=30) == {"payload": 1, "second": 2}
    with pytest.raises(WorkflowFinishedError):
        await client.send_event(wid, "approved", 3)
    with pytest.raises(WorkflowNotFoundError):
        await client.send_event("nobody", "approved", 3)


async def test_event_wait_times_out(client: ShardClient, start_executor: Any):
    await start_executor()
    wid = await client.start("approval", {"timeout": 0.3})
    assert await client.result(wid, timeout=30) == {"timeout": "EventTimeoutError"}


async def test_workflow_deadline(client: ShardClient, start_executor: Any):
    await start_executor()
    wid = await client.start("deadline", None)
    with pytest.raises(WorkflowFailedError) as info:
        await client.result(wid, timeout=30)
    assert info.value.error["type"] == "WorkflowTimeoutError"


@step
async def other_step() -> str:
    return "changed"


@workflow(name="sleeper")
async def changed_sleeper(ctx: Context, inp: dict[str, Any]) -> str:
    await other_step()
    return "changed"


async def test_changed_code_is_a_non_determinism_error(client: ShardClient, start_executor: Any):
    first = await start_executor()
    wid = await client.start("sleeper", {"seconds": 3600})
    await status_becomes(client, wid, "sleeping")
    await first.shutdown()
    await start_executor(Registry.of(changed_sleeper, basic.w3))
    async with client.pool.acquire() as conn:
        await conn.execute("UPDATE shardflow.ready SET run_at = now() WHERE workflow_id = $1", wid)
        await conn.execute("NOTIFY shardflow_ready")
    with pytest.raises(WorkflowFailedError) as info:
        await client.result(wid, timeout=30)
    assert info.value.error["type"] == "NonDeterminismError"
    assert "'other_step'" in info.value.error["message"]
    assert "'ctx.uuid'" in info.value.error["message"]


async def test_gc_removes_finished_workflows_only(client: ShardClient, start_executor: Any):
    executor = await start_executor(gc_retention=0, gc_batch=2)
    done = [await client.start("w3", make_input(i)) for i in range(5)]
    for wid in done:
        await client.result(wid, timeout=30)
    sleeping = await client.start("long_sleep", None)
    await status_becomes(client, sleeping, "sleeping")
    assert await executor.collect_garbage() == 5
    assert value(executor.metrics.registry, "shardflow_gc_workflows_removed_total") == 5
    async with client.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM shardflow.workflows") == 1
        assert await conn.fetchval("SELECT count(*) FROM shardflow.steps") == 1
    assert (await client.status(sleeping))["status"] == "sleeping"


async def test_child_workflows_inherit_the_routing_key_and_wake_the_parent(
    client: ShardClient, start_executor: Any
):
    await start_executor()
    wid = await client.start("family", {"n": 10}, id="parent-1", routing_key="family-key")
    assert await client.result(wid, timeout=60) == {
        "first": 10,
        "second": 11,
        "failed": "ChildWorkflowFailedError",
    }
    async with client.pool.acquire() as conn:
        children = await conn.fetch(
            "SELECT id, routing_key, parent, status FROM shardflow.workflows "
            "WHERE parent = 'parent-1' ORDER BY id"
        )
    assert [c["routing_key"] for c in children] == ["family-key"] * 3
    assert sorted(c["status"] for c in children) == ["completed", "completed", "failed"]
    names = [s["name"] for s in (await client.status(wid))["steps"]]
    assert names[:2] == ["ctx.child:w3", "ctx.child_result:w3"]


async def test_cancelling_a_parent_cancels_its_children(client: ShardClient, start_executor: Any):
    await start_executor()
    wid = await client.start("parent_of_sleeper", None, id="parent-2")
    await status_becomes(client, wid, "waiting")
    child = f"{wid}/0"
    await status_becomes(client, child, "sleeping")
    await client.cancel(wid)
    with pytest.raises(WorkflowCancelledError):
        await client.result(wid, timeout=30)
    with pytest.raises(WorkflowCancelledError):
        await client.result(child, timeout=30)


async def test_a_fan_out_of_children_under_gather_replays_deterministically(
    client: ShardClient, start_executor: Any
):
    await start_executor()
    wid = await client.start("fan_out", {"items": 6})
    assert await client.result(wid, timeout=60) == ["side", 0, 1, 2, 3, 4, 5]
    doc = await client.status(wid)
    assert [s["seq"] for s in doc["steps"]] == list(range(13))  # 1 step + 2 per child


async def test_start_child_returns_a_handle(client: ShardClient, start_executor: Any):
    await start_executor()
    wid = await client.start("handles", None, id="handles-1")
    assert await client.result(wid, timeout=60) == {
        "ids": ["handles-1/0", "h-2"],
        "between": "between",
        "reserved": [2, 1],
    }
