"""The order-fulfilment demo: a saga with a human approval.

``order_fulfillment`` input: ``{"order_id": str, "amount": number, "items": [str, ...],
"fail_at": optional step name, "approval_timeout_s": optional number}``.

reserve_inventory -> charge_payment (transactional: the charge row and the checkpoint
commit together) -> wait for the event ``approved`` (payload ``{"approved": bool}``;
the status is ``waiting`` meanwhile) -> ship each item as a child workflow ``ship``.
If a step fails (``fail_at`` names it: it raises a non-retryable error), approval is
refused or times out, or the workflow is cancelled, the compensations of the completed
steps run in reverse order (refund_payment, then release_inventory) and the status
document lists them under ``compensations``.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from shardflow import Context, EventTimeoutError, NonRetryableError, step, workflow

CHARGES = """
CREATE TABLE IF NOT EXISTS demo_charges (
    order_id text NOT NULL, amount numeric NOT NULL, kind text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
)"""


class OrderRejected(NonRetryableError):
    """The order cannot go on (a failing step, or approval refused or timed out)."""

    code = "order_rejected"


def _fail_if_asked(order: dict[str, Any], name: str) -> None:
    if order.get("fail_at") == name:
        raise OrderRejected(f"{name} failed for order {order['order_id']} (fail_at)")


@step(retries=3, backoff=0.2)
async def release_inventory(order: dict[str, Any], reserved: dict[str, Any]) -> dict[str, Any]:
    return {"released": reserved["reserved"]}


@step(retries=3, backoff=0.2, compensate=release_inventory)
async def reserve_inventory(order: dict[str, Any]) -> dict[str, Any]:
    _fail_if_asked(order, "reserve_inventory")
    return {"reserved": list(order.get("items", []))}


@step(transactional=True)
async def refund_payment(
    conn: asyncpg.Connection, order: dict[str, Any], charged: dict[str, Any]
) -> dict[str, Any]:
    """The refund row commits with its checkpoint: refunded exactly once."""
    await conn.execute(CHARGES)
    await conn.execute(
        "INSERT INTO demo_charges (order_id, amount, kind) VALUES ($1, $2, 'refund')",
        order["order_id"],
        -charged["charged"],
    )
    return {"refunded": charged["charged"]}


@step(transactional=True, compensate=refund_payment)
async def charge_payment(conn: asyncpg.Connection, order: dict[str, Any]) -> dict[str, Any]:
    """The charge row commits with its checkpoint: charged exactly once."""
    _fail_if_asked(order, "charge_payment")
    await conn.execute(CHARGES)
    await conn.execute(
        "INSERT INTO demo_charges (order_id, amount, kind) VALUES ($1, $2, 'charge')",
        order["order_id"],
        order["amount"],
    )
    return {"charged": order["amount"]}


@step
async def send_parcel(order_id: str, item: str, fail: bool) -> dict[str, Any]:
    if fail:
        raise OrderRejected(f"shipping {item} of order {order_id} failed (fail_at)")
    return {"item": item, "tracking": f"{order_id}-{item}"}


@workflow(name="ship")
async def ship(ctx: Context, parcel: dict[str, Any]) -> dict[str, Any]:
    """One item's shipment: a child of the order, on the order's shard."""
    return await send_parcel(parcel["order_id"], parcel["item"], parcel.get("fail", False))


@workflow(name="order_fulfillment")
async def order_fulfillment(ctx: Context, order: dict[str, Any]) -> dict[str, Any]:
    reserved = await reserve_inventory(order)
    charged = await charge_payment(order)
    try:
        decision = await ctx.wait_for_event("approved", timeout=order.get("approval_timeout_s"))
    except EventTimeoutError:
        raise OrderRejected(f"order {order['order_id']} was not approved in time") from None
    if not (isinstance(decision, dict) and decision.get("approved") is True):
        raise OrderRejected(f"order {order['order_id']} was refused")
    shipments = []
    for item in order.get("items", []):
        parcel = {"order_id": order["order_id"], "item": item}
        parcel["fail"] = order.get("fail_at") == "ship"
        shipments.append(await ctx.child(ship, parcel))
    return {"reserved": reserved, "charged": charged, "shipments": shipments}


# The saga three ways: approved; refused (compensated); failing at charge_payment.
DEMO_ORDERS: dict[str, dict[str, Any]] = {
    "approved": {},
    "refused": {},
    "failing": {"fail_at": "charge_payment"},
}


async def demo_story(client: Any, stamp: int) -> dict[str, str]:
    """What `shardflow dev --demo` shows of the saga: three orders, two approval events
    sent by the demo (a person, in real life); their workflow IDs by label."""
    orders = {}
    for kind, extra in DEMO_ORDERS.items():
        order = {"order_id": f"demo-{stamp}-{kind}", "amount": 42.0, "items": ["book", "lamp"]}
        orders[f"order ({kind})"] = (await client.start("order_fulfillment", order | extra))["id"]
    for kind, decision in (("approved", True), ("refused", False)):
        await client.send_event(orders[f"order ({kind})"], "approved", {"approved": decision})
    return orders
