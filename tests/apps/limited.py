"""Workflows with concurrency limits, for tests/test_limits.py."""

from __future__ import annotations

import asyncio
from typing import Any

from shardflow import Context, step, workflow


@step
async def hold(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "held"


@workflow(name="per_shard_limited", max_running_per_shard=2)
async def per_shard_limited(ctx: Context, inp: dict[str, Any]) -> str:
    return await hold(inp["s"])


@workflow(name="cluster_limited", max_running=3)
async def cluster_limited(ctx: Context, inp: dict[str, Any]) -> str:
    return await hold(inp["s"])


@workflow(name="free")
async def free(ctx: Context, inp: dict[str, Any]) -> str:
    return await hold(inp["s"])
