"""The order-fulfilment demo: reserve, charge (transactional), ship each item."""

from __future__ import annotations

from typing import Any

import asyncpg

from shardflow import Context, step, workflow


@step(retries=3, backoff=0.2)
async def reserve_inventory(order: dict[str, Any]) -> dict[str, Any]:
    return {"reserved": list(order.get("items", []))}


@step(transactional=True)
async def charge_payment(conn: asyncpg.Connection, order: dict[str, Any]) -> dict[str, Any]:
    """Writes the charge and its checkpoint in one transaction: charged exactly once."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS demo_charges (order_id text, amount numeric, "
        "charged_at timestamptz DEFAULT now())"
    )
    await conn.execute(
        "INSERT INTO demo_charges (order_id, amount) VALUES ($1, $2)",
        order["order_id"],
        order["amount"],
    )
    return {"charged": order["amount"]}


@step
async def ship(order_id: str, item: str) -> dict[str, Any]:
    return {"item": item, "tracking": f"{order_id}-{item}"}


@workflow(name="order_fulfillment")
async def order_fulfillment(ctx: Context, order: dict[str, Any]) -> dict[str, Any]:
    reserved = await reserve_inventory(order)
    charged = await charge_payment(order)
    shipments = await ctx.gather(*(ship(order["order_id"], i) for i in order.get("items", [])))
    return {"reserved": reserved, "charged": charged, "shipments": shipments}
