"""Saga compensation, on the order-fulfilment demo (examples/orders.py): every way an
order can end, and an executor killed halfway through the compensations."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from shardflow.infra.errors import (
    WorkflowCancelledError,
    WorkflowConflictError,
    WorkflowFailedError,
)
from shardflow.shard.client import ShardClient
from tests.waiting import status_becomes, until

APP = "examples.orders"
BOTH = ["refund_payment", "release_inventory"]


def _order(order_id: str, **extra: Any) -> dict[str, Any]:
    return {"order_id": order_id, "amount": 12.5, "items": ["book", "lamp"], **extra}


async def _charges(client: ShardClient, order_id: str) -> list[str]:
    async with client.pool.acquire() as conn:
        try:
            rows = await conn.fetch(
                "SELECT kind FROM demo_charges WHERE order_id = $1 ORDER BY at, kind", order_id
            )
        except asyncpg.UndefinedTableError:
            return []
    return [r["kind"] for r in rows]


async def _ended(client: ShardClient, wid: str, error: type[Exception]) -> dict[str, Any]:
    with pytest.raises(error):
        await client.result(wid, timeout=30)
    return await client.status(wid)


async def test_an_approved_order_ships_every_item(client: ShardClient, start_executor: Any):
    await start_executor(app=[APP])
    wid = await client.start("order_fulfillment", _order("ok-1"))
    await status_becomes(client, wid, "waiting")
    assert await client.send_event(wid, "approved", {"approved": True})
    out = await client.result(wid, timeout=30)
    assert [s["item"] for s in out["shipments"]] == ["book", "lamp"]
    doc = await client.status(wid)
    assert doc["status"] == "completed" and doc["compensations"] == []
    assert await _charges(client, "ok-1") == ["charge"]


@pytest.mark.parametrize(
    ("extra", "compensations"),
    [
        ({"fail_at": "reserve_inventory"}, []),
        ({"fail_at": "charge_payment"}, ["release_inventory"]),
        ({"fail_at": "ship", "approve": True}, BOTH),
        ({"approve": False}, BOTH),
        ({"approval_timeout_s": 0.2}, BOTH),
    ],
)
async def test_a_failed_order_compensates_in_reverse(
    client: ShardClient, start_executor: Any, extra: dict[str, Any], compensations: list[str]
):
    await start_executor(app=[APP])
    approve = extra.pop("approve", None)
    order_id = f"bad-{extra}-{approve}"
    wid = await client.start("order_fulfillment", _order(order_id, **extra))
    if approve is not None:
        await status_becomes(client, wid, "waiting")
        await client.send_event(wid, "approved", {"approved": approve})
    doc = await _ended(client, wid, WorkflowFailedError)
    assert doc["status"] == "failed"
    assert doc["compensations"] == compensations
    assert "compensations" not in doc["error"]
    charged = "charge_payment" not in str(extra) and "reserve_inventory" not in str(extra)
    assert await _charges(client, order_id) == (["charge", "refund"] if charged else [])


async def test_a_cancelled_order_compensates(client: ShardClient, start_executor: Any):
    await start_executor(app=[APP])
    wid = await client.start("order_fulfillment", _order("cancel-1"))
    await status_becomes(client, wid, "waiting")
    await client.cancel(wid)
    doc = await _ended(client, wid, WorkflowCancelledError)
    assert doc["status"] == "cancelled" and doc["compensations"] == BOTH
    assert await _charges(client, "cancel-1") == ["charge", "refund"]


async def test_a_kill_halfway_through_the_compensations_resumes_them_once(
    client: ShardClient, spawn_executor: Any
):
    # The 2nd transactional commit of this process is refund_payment: die right after it.
    victim = spawn_executor(app=APP, env={"SHARDFLOW_FAULTS": "after_step_commit=kill@2"})

    async def registered() -> bool:
        sql = "SELECT count(*) FROM shardflow.registry WHERE name = 'order_fulfillment'"
        return bool(await client.pool.fetchval(sql))

    await until(registered, timeout=60, what="the executor to register the demo")
    wid = await client.start("order_fulfillment", _order("crash-1"))
    await status_becomes(client, wid, "waiting")
    await client.send_event(wid, "approved", {"approved": False})

    async def died() -> bool:
        return victim.proc.poll() is not None

    await until(died, timeout=60, what="the executor to be killed by its fault point")
    assert await _charges(client, "crash-1") == ["charge", "refund"]
    assert (await client.status(wid))["status"] == "running"  # halfway, lease held
    spawn_executor(app=APP)
    doc = await _ended(client, wid, WorkflowFailedError)
    assert doc["compensations"] == BOTH
    assert await _charges(client, "crash-1") == ["charge", "refund"]  # refunded once
    names = [s["name"] for s in doc["steps"]]
    assert names.count("refund_payment") == 1 and names.count("release_inventory") == 1


async def test_a_compensated_order_cannot_be_retried(client: ShardClient, start_executor: Any):
    await start_executor(app=[APP])
    wid = await client.start("order_fulfillment", _order("retry-1", fail_at="charge_payment"))
    doc = await _ended(client, wid, WorkflowFailedError)
    assert doc["compensations"] == ["release_inventory"]
    with pytest.raises(WorkflowConflictError, match="compensations"):
        await client.retry(wid)
