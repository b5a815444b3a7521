"""The fault suite's mixed workload: W3, the order saga with its approval event, a parent
with children, and a transactional step appending to an application table."""

from __future__ import annotations

from typing import Any

from examples.bench import make_input, w3
from examples.orders import order_fulfillment, ship
from shardflow import Context, workflow
from tests.apps.crash import crashy

__all__ = ["brood", "crashy", "order_fulfillment", "ship", "w3"]


@workflow(name="brood")
async def brood(ctx: Context, inp: dict[str, Any]) -> list[Any]:
    children = [ctx.child("w3", make_input(inp["n"] * 10 + i)) for i in range(3)]
    return [r["reserved"] for r in await ctx.gather(*children)]
