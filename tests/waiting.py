"""Wait for a condition the code under test makes true (never for time to pass)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from shardflow.shard.client import ShardClient


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 30.0, what: str = "") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


async def status_becomes(client: ShardClient, wid: str, status: str, timeout: float = 30.0) -> None:
    async def check() -> bool:
        return (await client.status(wid))["status"] == status

    await until(check, timeout, f"{wid} to be {status}")
