"""The decorators keep a function's types for the user's mypy: `make typecheck` checks
this file under --strict with warn_unused_ignores, so a lost type fails CI."""

from __future__ import annotations

from typing import Any, assert_type

import asyncpg

from shardflow import Context, step, workflow


@step
async def reserve(order_id: int, items: list[str]) -> dict[str, int]:
    return {"reserved": len(items)}


@step(retries=2)
def label(order_id: int) -> str:  # a plain def step runs in a thread pool
    return f"label-{order_id}"


@step(transactional=True)
async def charge(conn: asyncpg.Connection[Any], order_id: int, amount: float) -> float:
    await conn.execute("SELECT 1")
    return amount


@workflow(name="typed_order")
async def typed_order(ctx: Context, order: dict[str, Any]) -> dict[str, Any]:
    reserved = await reserve(order["id"], ["book"])
    assert_type(reserved, dict[str, int])
    charged = await charge(order["id"], 9.5)  # called without its connection
    assert_type(charged, float)
    assert_type(await label(order["id"]), str)
    await reserve("not an int", [])  # type: ignore[arg-type]
    await charge(order["id"])  # type: ignore[call-arg]
    return {"reserved": reserved, "charged": charged}
