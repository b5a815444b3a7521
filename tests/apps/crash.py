"""Workflows for the crash tests: effects whose exactly-once-ness the tests check."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import asyncpg

from shardflow import Context, NonRetryableError, step, workflow


@step
async def plain(label: str, n: int) -> dict[str, Any]:
    return {"label": label, "n": n}


@step(transactional=True)
async def insert_app_row(conn: asyncpg.Connection, workflow_id: str) -> int:
    # app_rows has no unique constraint: a second insert would show as a duplicate.
    await conn.execute("INSERT INTO app_rows (workflow_id) VALUES ($1)", workflow_id)
    return 1


@step
async def pause(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@step
async def maybe_die() -> str:
    if os.environ.get("SHARDFLOW_TEST_KILL_IN_STEP") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@workflow(name="crashy")
async def crashy(ctx: Context, inp: dict[str, Any]) -> dict[str, Any]:
    a = await plain("a", inp["n"])
    rows = await insert_app_row(ctx.workflow_id)
    b = await plain("b", inp["n"])
    return {"a": a, "rows": rows, "b": b}


@workflow(name="slow")
async def slow(ctx: Context, inp: dict[str, Any]) -> int:
    for _ in range(inp["steps"]):
        await pause(inp["seconds"])
    return int(inp["steps"])


@workflow(name="killer")
async def killer(ctx: Context, inp: Any) -> str:
    return str(await maybe_die())


@workflow(name="waiter")
async def waiter(ctx: Context, inp: Any) -> Any:
    payload = await ctx.wait_for_event("go")
    await plain("after-event", 0)
    return payload


@workflow(name="napper")
async def napper(ctx: Context, inp: dict[str, Any]) -> str:
    await ctx.sleep(inp["seconds"])
    await plain("after-sleep", 0)
    return "rested"


@step(transactional=True)
async def unreserve_row(conn: asyncpg.Connection, workflow_id: str, reserved: int) -> None:
    await conn.execute("INSERT INTO app_rows (workflow_id) VALUES ($1)", f"{workflow_id}:undo")


@step(compensate=unreserve_row)
async def reserve_row(workflow_id: str) -> int:
    return 1


@workflow(name="killer_saga")
async def killer_saga(ctx: Context, inp: Any) -> str:
    await reserve_row(ctx.workflow_id)
    return str(await maybe_die())


@step(retries=3, backoff=0.05)
async def always_failing(workflow_id: str) -> None:
    """Counts its attempts in attempt_log (another connection: a failed attempt's
    transaction would roll the count back) and fails; the test's env can kill the
    executor at the start of an attempt instead."""
    conn = await asyncpg.connect(os.environ["SHARDFLOW_TEST_ATTEMPTS_DSN"])
    try:
        n = await conn.fetchval(
            "WITH i AS (INSERT INTO attempt_log VALUES ($1) RETURNING 1) "
            "SELECT count(*) + 1 FROM attempt_log WHERE workflow_id = $1",
            workflow_id,
        )
    finally:
        await conn.close()
    if str(n) == os.environ.get("SHARDFLOW_TEST_KILL_AT_ATTEMPT"):
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"attempt {n} failed")


@workflow(name="retries_across_crashes")
async def retries_across_crashes(ctx: Context, inp: Any) -> None:
    await always_failing(ctx.workflow_id)


@workflow(name="slow_append")
async def slow_append(ctx: Context, inp: dict[str, Any]) -> dict[str, Any]:
    """A long step first (so an executor holds the lease when a fault comes), then an
    append to app_rows in the step's transaction."""
    await pause(inp["seconds"])
    rows = await insert_app_row(ctx.workflow_id)
    return {"rows": rows}


@step(transactional=True)
async def undo_dying(conn: asyncpg.Connection, workflow_id: str, reserved: int) -> None:
    """A compensation that kills its process (with SHARDFLOW_TEST_KILL_IN_STEP=1) before
    its insert: the one that runs to the end, on the peer, writes the one undo row."""
    if os.environ.get("SHARDFLOW_TEST_KILL_IN_STEP") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    await conn.execute("INSERT INTO app_rows (workflow_id) VALUES ($1)", f"{workflow_id}:undo")


@step(compensate=undo_dying)
async def reserve_for_dying(workflow_id: str) -> int:
    return 1


@step
async def refuse() -> None:
    raise NonRetryableError("refused: compensate")


@workflow(name="dying_compensation")
async def dying_compensation(ctx: Context, inp: Any) -> str:
    await reserve_for_dying(ctx.workflow_id)
    await refuse()
    return "never"
