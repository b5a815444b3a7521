"""W3 on DBOS Transact: a workflow of three steps, served over HTTP by the DBOS app itself.

``python -m loadtests.dbos_w3 --database-url URL --port PORT [--index N]`` launches DBOS
on that Postgres (its system database: every workflow's status and each step's output written
there before the next step runs, DBOS's durable default) and serves ``POST /w3`` with the
order as its body and an ``Id`` header: the workflow is started under that ID with
``DBOS.start_workflow_async`` and the answer is its result. As DBOS documents for async
applications, the workflow and its ``async`` steps run on the request's own event loop
(no thread hop), and its connection pool is sized for the load (``sys_db_pool_size``).
DBOS scales out by running more application processes on one system database, each an
executor of its own (``executor_id``); ``--index`` names them, and the processes share
the port (``SO_REUSEPORT``: the kernel spreads the connections).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from aiohttp import web
from dbos import DBOS, DBOSConfig, SetWorkflowID

# What the report prints as this system's configuration.
POOL_SIZE = 64


def settings(database_url: str, index: int) -> DBOSConfig:
    return {
        "name": "w3-bench",
        "system_database_url": database_url,
        "sys_db_pool_size": POOL_SIZE,
        "log_level": "WARNING",
        "run_migrations": index == 0,  # the first process makes the system tables
        "executor_id": f"w3-bench-{index}",
    }


@DBOS.step()
async def reserve(order: dict[str, Any]) -> dict[str, Any]:
    return {"reserved": order["order_id"]}


@DBOS.step()
async def charge(order: dict[str, Any]) -> dict[str, Any]:
    return {"charged": order["amount"]}


@DBOS.step()
async def notify(order: dict[str, Any]) -> dict[str, Any]:
    return {"notified": True}


@DBOS.workflow()
async def w3(order: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for step in (reserve, charge, notify):
        out.update(await step(order))
    return out


async def run_w3(request: web.Request) -> web.Response:
    order = await request.json()
    with SetWorkflowID(request.headers["Id"]):
        handle = await DBOS.start_workflow_async(w3, order)
    return web.json_response(await handle.get_result())


async def serve(database_url: str, port: int, index: int) -> None:
    DBOS(config=settings(database_url, index))
    DBOS.launch()
    app = web.Application()
    app.router.add_post("/w3", run_w3)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("dbos app ready", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        DBOS.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True, help="DBOS's system database")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--index", type=int, default=0, help="this app process's number")
    args = parser.parse_args()
    asyncio.run(serve(args.database_url, args.port, args.index))


if __name__ == "__main__":
    main()
