"""`shardflow demo`: a local shard, the example apps, a short load with live progress."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from coordinator.local_shard import LocalShard
from examples.bench import make_input
from shard.client import ShardClient, StartRequest


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run a local shard with the examples and a short load")
    p.add_argument("--data", default=".shardflow", help="folder kept between runs")
    p.add_argument("--workflows", type=int, default=5000)
    p.add_argument("--executors", type=int, default=1)
    p.set_defaults(handler=_demo)


def _absolute(path: str) -> Path:
    return Path(os.path.abspath(path))


async def _demo(args: argparse.Namespace) -> int:
    console = Console()
    data = _absolute(args.data)
    shard = LocalShard(data, apps=["examples.bench", "examples.orders"])
    console.print(f"[bold]starting a local shard[/] (data in {data})")
    try:
        await shard.start()
        for _ in range(args.executors):
            shard.spawn_executor()
        await shard.wait_registered("w3")
        await shard.wait_registered("order_fulfillment")
        console.print(f"shard: {shard.dsn}")
        client = await ShardClient.connect(shard.dsn)
        try:
            await _run_load(console, client, shard.dsn, args.workflows)
        finally:
            await client.close()
    finally:
        shard.stop()
    return 0


async def _run_load(console: Console, client: ShardClient, dsn: str, total: int) -> None:
    stamp = int(time.time())
    order_id = f"demo-order-{stamp}"
    await client.start(
        "order_fulfillment",
        {"order_id": order_id, "amount": 42.0, "items": ["book", "lamp"]},
        id=order_id,
    )
    t0 = time.time()
    started = 0
    conn = await asyncpg.connect(dsn)
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            starting = progress.add_task("started  ", total=total)
            finishing = progress.add_task("completed", total=total)
            done = 0
            while done < total:
                if started < total:
                    n = min(500, total - started)
                    await client.start_many(
                        [
                            StartRequest("w3", make_input(i), id=f"demo-{stamp}-{i}")
                            for i in range(started, started + n)
                        ]
                    )
                    started += n
                    progress.update(starting, completed=started)
                done = await conn.fetchval(
                    "SELECT count(*) FROM shardflow.workflows WHERE name = 'w3' "
                    "AND status = 'completed' AND created_at >= to_timestamp($1)",
                    t0,
                )
                progress.update(finishing, completed=done)
                await asyncio.sleep(0.1)
        elapsed = time.time() - t0
        row = await conn.fetchrow(
            """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) AS p50,
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) AS p99
               FROM shardflow.workflows WHERE name = 'w3' AND created_at >= to_timestamp($1)""",  # noqa: E501
            t0,
        )
    finally:
        await conn.close()
    order = await client.result(order_id, timeout=30)
    table = Table(title="demo summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("W3 workflows completed", str(total))
    table.add_row("throughput (start to last finish)", f"{total / elapsed:.0f} wf/s")
    assert row is not None
    table.add_row("start-to-finish p50", f"{(row['p50'] or 0) * 1000:.1f} ms")
    table.add_row("start-to-finish p99", f"{(row['p99'] or 0) * 1000:.1f} ms")
    table.add_row("order_fulfillment result", str(order))
    console.print(table)
