"""W3 on Temporal: a workflow of three activities, and the worker that runs them.

``python -m loadtests.temporal_w3 --target HOST:PORT`` runs one worker on the ``w3`` task
queue until it is stopped. The module imports only the standard library and temporalio,
so Temporal's workflow sandbox can re-import it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

TASK_QUEUE = "w3"
STEP_TIMEOUT = timedelta(seconds=30)


@activity.defn
async def reserve(order: dict[str, Any]) -> dict[str, Any]:
    return {"reserved": order["order_id"]}


@activity.defn
async def charge(order: dict[str, Any]) -> dict[str, Any]:
    return {"charged": order["amount"]}


@activity.defn
async def notify(order: dict[str, Any]) -> dict[str, Any]:
    return {"notified": True}


@workflow.defn(name="w3")
class W3:
    @workflow.run
    async def run(self, order: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for step in (reserve, charge, notify):
            out.update(
                await workflow.execute_activity(step, order, start_to_close_timeout=STEP_TIMEOUT)
            )
        return out


async def serve(target: str) -> None:
    client = await Client.connect(target)
    worker = Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[W3],
        activities=[reserve, charge, notify],
        max_concurrent_activities=256,
        max_concurrent_workflow_tasks=256,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        print("worker ready", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="the Temporal frontend, HOST:PORT")
    asyncio.run(serve(parser.parse_args().target))


if __name__ == "__main__":
    main()
