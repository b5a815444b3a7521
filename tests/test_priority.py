"""Priorities: the claim takes higher priorities first, then the oldest; children inherit
their parent's; a priority out of range is a clear error. Real Postgres, real executors."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from shardflow.infra.errors import BadRequestError
from shardflow.shard.client import ShardClient
from tests.cluster_fixtures import LiveCluster

W3_INPUT = {"order_id": 1, "amount": 1.0, "pad": "p"}


async def test_higher_priorities_are_claimed_first_then_the_oldest(
    client: ShardClient, start_executor: Any
) -> None:
    order = [("a", 0), ("b", 5), ("c", -3), ("d", 5), ("e", 10), ("f", 0), ("g", -1)]
    await (await start_executor()).shutdown()  # registers w3, then leaves
    for wid, priority in order:  # queued before any executor runs, oldest first
        await client.start("w3", W3_INPUT, id=wid, priority=priority)
    await start_executor(concurrency=1, claim_batch=1)
    for wid, _ in order:
        await client.result(wid, timeout=30)
    rows = await client.pool.fetch(
        "SELECT w.id, w.priority, min(s.started_at) AS began FROM shardflow.workflows w "
        "JOIN shardflow.steps s ON s.workflow_id = w.id GROUP BY w.id ORDER BY began"
    )
    assert [r["id"] for r in rows] == ["e", "b", "d", "a", "f", "g", "c"]
    assert (await client.status("e"))["priority"] == 10


async def test_a_timer_or_event_keeps_its_workflows_priority(
    client: ShardClient, start_executor: Any
) -> None:
    await start_executor()
    wid = await client.start("approval", {}, priority=7)
    await client.send_event(wid, "approved", {"ok": True})
    assert (await client.result(wid, timeout=30))["payload"] == {"ok": True}
    queued = await client.pool.fetch("SELECT priority FROM shardflow.ready")
    assert all(r["priority"] == 7 for r in queued)  # nothing left, or only its own entries
    assert (await client.status(wid))["priority"] == 7


async def test_children_run_at_their_parents_priority(
    client: ShardClient, start_executor: Any
) -> None:
    await start_executor()
    parent = await client.start("family", {"n": 3}, priority=-20)
    await client.result(parent, timeout=60)
    children = await client.pool.fetch(
        "SELECT priority FROM shardflow.workflows WHERE parent = $1", parent
    )
    assert len(children) == 3 and {r["priority"] for r in children} == {-20}


@pytest.mark.parametrize("priority", [1001, -1001, 2.5, True, "high"])
async def test_a_priority_out_of_range_is_refused(
    client: ShardClient, start_executor: Any, priority: Any
) -> None:
    await start_executor()
    with pytest.raises(BadRequestError):
        await client.start("w3", W3_INPUT, priority=priority)
    assert await client.pool.fetchval("SELECT count(*) FROM shardflow.workflows") == 0


@pytest.mark.parametrize("priority", [1001, 2.5, True, "high", None])
async def test_the_http_api_checks_priorities(cluster: LiveCluster, priority: Any) -> None:
    client = await cluster.add_router()
    body = {"workflow": "w3", "input": W3_INPUT, "priority": priority}
    async with (
        aiohttp.ClientSession() as http,
        http.post(client.url + "/v1/workflows", json=body) as resp,
    ):
        if priority is None:
            assert resp.status == 201
        else:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "bad_request"
    doc = await client.start("w3", W3_INPUT, priority=42)
    assert (await client.status(doc["id"]))["priority"] == 42
