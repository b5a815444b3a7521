"""The demo of `make run`: W3 and order workflows through the HTTP API, with live progress."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from examples.bench import make_input
from shardflow.router.client import Client

console = Console()


def print_welcome(cluster: Any) -> None:
    table = Table(title="shardflow dev cluster", show_header=False)
    for url in cluster.router_urls:
        table.add_row("router", url)
    if cluster.settings.haproxy:
        table.add_row("haproxy", cluster.url)
    table.add_row("catalog", cluster.catalog_dsn)
    for shard_id, dsn in cluster.shard_dsns.items():
        table.add_row(shard_id, dsn)
    table.add_row("logs", str(cluster.data / "logs"))
    table.add_row("prometheus targets", str(cluster.targets_file))
    if cluster.prometheus_url:
        table.add_row("prometheus", cluster.prometheus_url)
    console.print(table)
    url = cluster.url
    console.print("try:")
    console.print(
        f"  curl -s -X POST {url}/v1/workflows -H 'Content-Type: application/json' "
        '-d \'{"workflow": "w3", "input": {"order_id": 1, "amount": 9.5, '
        '"pad": "x"}, "id": "hello-1"}\''
    )
    console.print(f"  curl -s '{url}/v1/workflows/hello-1/result?timeout=10'")
    console.print(f"  curl -s {url}/v1/cluster")


# The order saga three ways: approved; refused (compensated); failing at charge_payment.
ORDERS: dict[str, dict[str, Any]] = {
    "approved": {},
    "refused": {},
    "failing": {"fail_at": "charge_payment"},
}


async def run_demo(url: str, total: int, token: str | None = None) -> None:
    stamp = int(time.time())
    latencies: list[float] = []
    async with Client(url, token) as client:
        orders = {
            kind: (
                await client.start(
                    "order_fulfillment",
                    {"order_id": f"demo-{stamp}-{kind}", "amount": 42.0, "items": ["book", "lamp"]}
                    | extra,
                )
            )["id"]
            for kind, extra in ORDERS.items()
        }
        sem = asyncio.Semaphore(64)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("W3 workflows through the router", total=total)

            async def one(i: int) -> None:
                async with sem:
                    t0 = time.perf_counter()
                    started = await client.start("w3", make_input(i), id=f"demo-{stamp}-{i}")
                    await client.result(started["id"], timeout=60)
                    latencies.append(time.perf_counter() - t0)
                    progress.advance(task)

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(total)))
            elapsed = time.perf_counter() - t0
        for kind, decision in (("approved", True), ("refused", False)):
            await client.send_event(orders[kind], "approved", {"approved": decision})
        for wid in orders.values():
            await client.wait(wid, timeout=60)
        outcomes = {kind: await client.status(wid) for kind, wid in orders.items()}
        cluster = await client.cluster()
    latencies.sort()
    table = Table(title="demo summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("W3 workflows completed", str(total))
    table.add_row("throughput (64 clients, start + long-poll)", f"{total / elapsed:.0f} wf/s")
    table.add_row("start-to-result p50", f"{latencies[len(latencies) // 2] * 1000:.1f} ms")
    table.add_row("start-to-result p99", f"{latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms")
    for shard in cluster["shards"]:
        table.add_row(f"{shard['id']} slots", str(shard["slots"]))
    for kind, doc in outcomes.items():
        undo = ", ".join(doc.get("compensations") or []) or "none"
        table.add_row(f"order ({kind})", f"{doc['status']}; compensations: {undo}")
    console.print(table)
