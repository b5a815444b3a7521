"""A workflow whose step logs, for the log format tests (tests/test_logs.py)."""

from __future__ import annotations

import logging
from typing import Any

from shardflow import Context, step, workflow

log = logging.getLogger("noisy.app")


@step
async def shout(n: int) -> int:
    log.info("event=inside n=%d note=%s", n, 'a "quoted" value')
    return n


@workflow(name="noisy")
async def noisy(ctx: Context, inp: dict[str, Any]) -> int:
    return await shout(inp["n"])
