"""Guarantees at the edges (issue #31): a workflow's deadline ends it whatever it waits
for, compensations run on every path that fails a workflow, and a parent hears of every
way its child ends."""

from __future__ import annotations

from typing import Any

import pytest

from shardflow.infra.errors import WorkflowFailedError
from shardflow.shard.client import ShardClient
from shardflow.shard.queries import query
from shardflow.shard.sdk import Registry
from tests.apps import edges
from tests.waiting import status_becomes

APP = ["tests.apps.edges", "tests.apps.basic"]


async def _undone(client: ShardClient, wid: str) -> int:
    async with client.pool.acquire() as conn:
        return int(
            await conn.fetchval("SELECT count(*) FROM edge_undo WHERE workflow_id = $1", wid)
        )


@pytest.fixture
async def undo_table(client: ShardClient) -> None:
    async with client.pool.acquire() as conn:
        await conn.execute(edges.UNDO_TABLE)


@pytest.mark.parametrize(
    "name", ["waits_for_nothing", "waits_for_a_sleeper", "sleeps_past_its_deadline"]
)
async def test_the_deadline_ends_a_waiting_workflow_and_compensates_once(
    client: ShardClient, start_executor: Any, undo_table: None, name: str
) -> None:
    """Waiting for an event with no timeout of its own, for a child, or sleeping past the
    workflow's timeout: the deadline fails it, and its compensation runs once."""
    await start_executor(app=APP)
    wid = await client.start(name, None)
    with pytest.raises(WorkflowFailedError) as info:
        await client.result(wid, timeout=30)
    assert info.value.error["type"] == "WorkflowTimeoutError"
    doc = await client.status(wid)
    assert doc["status"] == "failed" and doc["compensations"] == ["undo"]
    assert await _undone(client, wid) == 1


async def _kinds_known_then(client: ShardClient, start_executor: Any, *keep: Any) -> None:
    """Register every kind of the apps, then leave running an executor that has code
    only for ``keep``: the others stay pending."""
    first = await start_executor(app=APP)
    await first.shutdown()
    await start_executor(Registry.of(*keep))


async def test_cancelling_a_pending_child_wakes_its_parent(
    client: ShardClient, start_executor: Any
) -> None:
    await _kinds_known_then(client, start_executor, edges.waits_for_child)
    wid = await client.start("waits_for_child", {"child": "naps"})
    await status_becomes(client, wid, "waiting")
    child = f"{wid}/0"
    assert (await client.status(child))["status"] == "pending"
    await client.cancel(child)
    assert await client.result(wid, timeout=30) == {"child_ended": "ChildWorkflowFailedError"}


async def test_gc_keeps_a_finished_child_until_its_parent_finishes(
    client: ShardClient, start_executor: Any
) -> None:
    await _kinds_known_then(client, start_executor, edges.waits_for_child)
    wid = await client.start("waits_for_child", {"child": "naps"})
    await status_becomes(client, wid, "waiting")
    child = f"{wid}/0"
    async with client.pool.acquire() as conn:
        # The parent's wake-up is held back (its ready entry locked) while the child ends
        # and the GC runs with no retention.
        async with conn.transaction():
            await conn.execute(
                "UPDATE shardflow.workflows SET status = 'cancelled', "
                "finished_at = now() - interval '1 day' WHERE id = $1",
                child,
            )
            removed = await conn.fetch(query("gc_delete_batch"), 0.0, 100)
        assert child not in {r["id"] for r in removed}
        assert (
            await conn.fetchval("SELECT count(*) FROM shardflow.workflows WHERE id = $1", child)
            == 1
        )


async def test_a_long_backoff_is_a_durable_timer(client: ShardClient, start_executor: Any):
    """The failed attempt is recorded with the time of the next one, and the workflow
    sleeps meanwhile (its lease released), then replays into the second attempt."""
    await start_executor(app=APP)
    wid = await client.start("durable_backoff", None)
    await status_becomes(client, wid, "sleeping")
    (step,) = (await client.status(wid))["steps"]
    assert (step["status"], step["attempts"]) == ("retrying", 1)
    async with client.pool.acquire() as conn:  # the backoff's 30 s, skipped
        await conn.execute(
            "UPDATE shardflow.steps SET output = '{\"retry_at\": 0}' WHERE workflow_id = $1", wid
        )
        await conn.execute("UPDATE shardflow.ready SET run_at = now() WHERE workflow_id = $1", wid)
        await conn.execute("NOTIFY shardflow_ready")
    assert await client.result(wid, timeout=30) == "second attempt"
    (step,) = (await client.status(wid))["steps"]
    assert (step["status"], step["attempts"]) == ("completed", 2)
