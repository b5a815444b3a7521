"""Workflows used by the engine tests (also loaded by executor processes with --app)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg

from examples.bench import w3
from shardflow import Context, NonRetryableError, step, workflow

__all__ = ["w3"]

ATTEMPTS: dict[str, int] = {}


@step(retries=2, backoff=0.01)
async def flaky(key: str, fail_times: int) -> int:
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] <= fail_times:
        raise RuntimeError(f"flaky failure {ATTEMPTS[key]}")
    return ATTEMPTS[key]


@step(retries=5, backoff=0.01)
async def fatal() -> None:
    raise NonRetryableError("this cannot work")


@step(retries=1, backoff=0.01, timeout=0.2)
async def slow() -> str:
    await asyncio.sleep(5)
    return "never"


@step
async def bad_result() -> Any:
    return {"when": object()}


@step
def blocking_add(a: int, b: int) -> int:
    return a + b


@step(transactional=True)
async def record_row(conn: asyncpg.Connection, key: str) -> int:
    await conn.execute("CREATE TABLE IF NOT EXISTS app_rows (key text, pid int)")
    await conn.execute("INSERT INTO app_rows (key, pid) VALUES ($1, $2)", key, os.getpid())
    return int(await conn.fetchval("SELECT count(*) FROM app_rows WHERE key = $1", key))


@step
async def echo(value: Any) -> Any:
    return value


@workflow(name="echoing")
async def echoing(ctx: Context, inp: Any) -> Any:
    return await echo(inp)


@workflow(name="retrying")
async def retrying(ctx: Context, inp: dict[str, Any]) -> dict[str, Any]:
    n = await flaky(inp["key"], inp["fail_times"])
    return {"attempts": n}


@workflow(name="failing")
async def failing(ctx: Context, inp: Any) -> None:
    await fatal()


@workflow(name="catching")
async def catching(ctx: Context, inp: Any) -> str:
    try:
        await fatal()
    except Exception as exc:
        return f"caught {type(exc).__name__}"
    return "no error"


@workflow(name="timing_out_step")
async def timing_out_step(ctx: Context, inp: Any) -> str:
    return str(await slow())


@workflow(name="bad_output")
async def bad_output(ctx: Context, inp: Any) -> Any:
    return await bad_result()


@workflow(name="mixed")
async def mixed(ctx: Context, inp: dict[str, Any]) -> dict[str, Any]:
    total = await blocking_add(inp["a"], inp["b"])
    rows = await record_row(ctx.workflow_id)
    a, b = await ctx.gather(echo("left"), echo("right"))
    stamp = await ctx.now()
    token = await ctx.uuid()
    roll = await ctx.random()
    return {
        "total": total,
        "rows": rows,
        "pair": [a, b],
        "stamp": stamp.isoformat(),
        "token": token,
        "roll": roll,
    }


@workflow(name="sleeper")
async def sleeper(ctx: Context, inp: dict[str, Any]) -> dict[str, Any]:
    before = await ctx.uuid()
    await ctx.sleep(inp["seconds"])
    after = await echo("woke")
    return {"token": before, "after": after}


@workflow(name="approval")
async def approval(ctx: Context, inp: dict[str, Any]) -> dict[str, Any]:
    try:
        payload = await ctx.wait_for_event("approved", timeout=inp.get("timeout"))
    except Exception as exc:
        return {"timeout": type(exc).__name__}
    second = await ctx.wait_for_event("approved") if inp.get("twice") else None
    return {"payload": payload, "second": second}


@workflow(name="deadline", timeout=0.5)
async def deadline(ctx: Context, inp: Any) -> str:
    await asyncio.sleep(5)
    return "late"


@workflow(name="long_sleep")
async def long_sleep(ctx: Context, inp: Any) -> str:
    await ctx.sleep(3600)
    return "done"


@workflow(name="family")
async def family(ctx: Context, inp: dict[str, Any]) -> dict[str, Any]:
    first = await ctx.child("w3", {"order_id": inp["n"], "amount": 1.0, "pad": "c"})
    second = await ctx.child(w3, {"order_id": inp["n"] + 1, "amount": 2.0, "pad": "c"})
    try:
        await ctx.child("failing", None)
    except Exception as exc:
        failed = type(exc).__name__
    return {"first": first["reserved"], "second": second["reserved"], "failed": failed}


@workflow(name="retry_me")
async def retry_me(ctx: Context, inp: dict[str, Any]) -> dict[str, Any]:
    first = await echo("first")
    n = await flaky(inp["key"], inp["fail_times"])
    return {"first": first, "attempts": n}


@workflow(name="parent_of_sleeper")
async def parent_of_sleeper(ctx: Context, inp: Any) -> Any:
    return await ctx.child("long_sleep", None)


@workflow(name="fan_out")
async def fan_out(ctx: Context, inp: dict[str, Any]) -> list[Any]:
    """A data-dependent fan-out: one child per item, all at once, plus a step."""
    children = [
        ctx.child(w3, {"order_id": n, "amount": 1.0, "pad": "f"}) for n in range(inp["items"])
    ]
    results = await ctx.gather(echo("side"), *children)
    return [results[0], *(r["reserved"] for r in results[1:])]


@workflow(name="handles")
async def handles(ctx: Context, inp: Any) -> dict[str, Any]:
    first = await ctx.start_child(w3, {"order_id": 1, "amount": 1.0, "pad": "h"})
    second = await ctx.start_child("w3", {"order_id": 2, "amount": 1.0, "pad": "h"}, id="h-2")
    between = await echo("between")
    return {
        "ids": [first.id, second.id],
        "between": between,
        "reserved": [(await second.result())["reserved"], (await first.result())["reserved"]],
    }
