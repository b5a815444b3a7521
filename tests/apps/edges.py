"""Workflows for the guarantees at the edges: deadlines while waiting, compensations on
every failing path, parents of children that end in every way."""

from __future__ import annotations

from typing import Any

import asyncpg

from shardflow import Context, step, workflow

UNDO_TABLE = "CREATE TABLE IF NOT EXISTS edge_undo (workflow_id text NOT NULL)"


@step(transactional=True)
async def undo(conn: asyncpg.Connection, key: str, done: str) -> None:
    # edge_undo has no unique key: a compensation run twice shows as two rows.
    await conn.execute("INSERT INTO edge_undo (workflow_id) VALUES ($1)", key)


@step(compensate=undo)
async def do(key: str) -> str:
    return f"did {key}"


@workflow(name="waits_for_nothing", timeout=1)
async def waits_for_nothing(ctx: Context, inp: Any) -> Any:
    await do(ctx.workflow_id)
    return await ctx.wait_for_event("never")


@workflow(name="waits_for_a_sleeper", timeout=1)
async def waits_for_a_sleeper(ctx: Context, inp: Any) -> Any:
    await do(ctx.workflow_id)
    return await ctx.child("naps", None)


@workflow(name="sleeps_past_its_deadline", timeout=1)
async def sleeps_past_its_deadline(ctx: Context, inp: Any) -> Any:
    await do(ctx.workflow_id)
    await ctx.sleep(3600)
    return "woke"


@workflow(name="naps")
async def naps(ctx: Context, inp: Any) -> str:
    await ctx.sleep(3600)
    return "rested"


@workflow(name="waits_for_child")
async def waits_for_child(ctx: Context, inp: dict[str, Any]) -> Any:
    try:
        return await ctx.child(inp["child"], None)
    except Exception as exc:
        return {"child_ended": type(exc).__name__}


FAILED_ONCE: set[str] = set()


@step(retries=2, backoff=30)
async def fails_once_then_waits(key: str) -> str:
    """Fails its first attempt; the backoff (30 s) is a durable timer, not a sleep."""
    if key not in FAILED_ONCE:
        FAILED_ONCE.add(key)
        raise RuntimeError("first attempt fails")
    return "second attempt"


@workflow(name="durable_backoff")
async def durable_backoff(ctx: Context, inp: Any) -> str:
    return await fails_once_then_waits(ctx.workflow_id)
