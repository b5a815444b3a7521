"""W3 (examples/bench.py's steps) with a charge step that can kill its own executor, for the
trace across a crash."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from examples.bench import notify, reserve
from shardflow import Context, step, workflow


@step
async def charge(order: dict[str, Any]) -> dict[str, Any]:
    if os.environ.get("SHARDFLOW_TEST_KILL_IN_STEP") == "1":
        # after the exporter's schedule delay, so what ended before is out of the process
        await asyncio.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)
    return {"charged": order["amount"]}


@workflow(name="traced_w3")
async def traced_w3(ctx: Context, order: dict[str, Any]) -> dict[str, Any]:
    r = await reserve(order)
    c = await charge(order)
    n = await notify(order)
    return {**r, **c, **n}
