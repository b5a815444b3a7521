"""Workflows for the cron schedule tests: one declared with a schedule, one slow."""

from __future__ import annotations

from typing import Any

from shardflow import Context, step, workflow


@step
async def noted(value: Any) -> Any:
    return value


@workflow(name="every_second", schedule="* * * * * *", timezone="Europe/Paris")
async def every_second(ctx: Context, inp: Any) -> Any:
    return await noted(inp)


@workflow(name="quick")
async def quick(ctx: Context, inp: Any) -> Any:
    return await noted(inp)


@workflow(name="slow_tick")
async def slow_tick(ctx: Context, inp: Any) -> Any:
    await ctx.sleep(2.5)
    return await noted(inp)
