"""Workload W3: three sequential trivial steps, the figure every benchmark reports."""

from __future__ import annotations

from typing import Any

from shardflow import Context, step, workflow


@step
async def reserve(order: dict[str, Any]) -> dict[str, Any]:
    return {"reserved": order["order_id"]}


@step
async def charge(order: dict[str, Any]) -> dict[str, Any]:
    return {"charged": order["amount"]}


@step
async def notify(order: dict[str, Any]) -> dict[str, Any]:
    return {"notified": True}


@workflow(name="w3")
async def w3(ctx: Context, order: dict[str, Any]) -> dict[str, Any]:
    r = await reserve(order)
    c = await charge(order)
    n = await notify(order)
    return {**r, **c, **n}


def make_input(i: int) -> dict[str, Any]:
    return {"order_id": i, "amount": round(10 + (i % 1000) * 0.25, 2), "pad": "x" * 64}


def demo_input(i: int) -> tuple[str, dict[str, Any]]:
    """The i-th workflow of `shardflow dev --demo N` (the bulk load of `make run`)."""
    return "w3", make_input(i)
