"""Retrying a failed workflow from its failed step: client, SQL and HTTP."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shardflow.infra.errors import WorkflowConflictError, WorkflowFailedError, WorkflowNotFoundError
from shardflow.shard.client import ShardClient
from tests.cluster_fixtures import LiveCluster


async def test_retry_reruns_the_failed_step_and_replays_the_rest(
    client: ShardClient, start_executor: Any
):
    await start_executor()
    wid = await client.start("retry_me", {"key": uuid.uuid4().hex, "fail_times": 4})
    with pytest.raises(WorkflowFailedError):
        await client.result(wid, timeout=30)
    assert await client.retry(wid) == "pending"
    assert await client.result(wid, timeout=30) == {"first": "first", "attempts": 5}
    doc = await client.status(wid)
    assert [(s["name"], s["status"]) for s in doc["steps"]] == [
        ("echo", "completed"),
        ("flaky", "completed"),
    ]
    assert doc["error"] is None and doc["finished_at"] is not None
    with pytest.raises(WorkflowConflictError, match="only a failed workflow"):
        await client.retry(wid)
    with pytest.raises(WorkflowNotFoundError):
        await client.retry("no-such-workflow")


async def test_retry_from_plain_sql(client: ShardClient, start_executor: Any):
    await start_executor()
    wid = await client.start("retry_me", {"key": uuid.uuid4().hex, "fail_times": 3})
    with pytest.raises(WorkflowFailedError):
        await client.result(wid, timeout=30)
    async with client.pool.acquire() as conn:
        assert await conn.fetchval("SELECT shardflow.retry_workflow($1)", wid) == "pending"
    assert (await client.result(wid, timeout=30))["attempts"] == 4


async def test_retry_over_http(cluster: LiveCluster):
    client = await cluster.add_router()
    doc = await client.start("retry_me", {"key": uuid.uuid4().hex, "fail_times": 3})
    with pytest.raises(WorkflowFailedError):
        await client.result(doc["id"], timeout=30)
    assert await client.retry(doc["id"]) == "pending"
    assert (await client.result(doc["id"], timeout=30))["attempts"] == 4
    with pytest.raises(WorkflowConflictError):
        await client.retry(doc["id"])
    with pytest.raises(WorkflowNotFoundError):
        await client.retry("missing")
