"""The demo of `make run`: W3 and order workflows through the HTTP API, with live progress."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shardflow.router.client import Client

console = Console()


def print_welcome(cluster: Any) -> None:
    table = Table(title="shardflow dev cluster", show_header=False)
    for url in cluster.router_urls:
        table.add_row("router", url)
    table.add_row("console", f"{cluster.url}/ui")
    if cluster.settings.haproxy:
        table.add_row("haproxy", cluster.url)
    table.add_row("catalog", cluster.catalog_dsn)
    for shard_id, dsn in cluster.shard_dsns.items():
        table.add_row(shard_id, dsn)
    table.add_row("admin token", f"{cluster.admin_token} (kept in {cluster.admin_token_file})")
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


async def run_demo(url: str, total: int, apps: list[Any], token: str | None = None) -> None:
    """The demo of `shardflow dev --demo N`, made of the app modules' own hooks (none is
    required): ``demo_input(i) -> (workflow, input)`` gives the bulk load of N workflows,
    ``async demo_story(client, stamp) -> {label: workflow ID}`` starts a few workflows to
    show (and drives them: events), summarised once they finish."""
    stamp = int(time.time())
    inputs = [m.demo_input for m in apps if callable(getattr(m, "demo_input", None))]
    stories = [m.demo_story for m in apps if callable(getattr(m, "demo_story", None))]
    latencies: list[float] = []
    elapsed = 0.0
    async with Client(url, token) as client:
        shown: dict[str, str] = {}
        for story in stories:
            shown |= await story(client, stamp)
        if inputs:
            sem = asyncio.Semaphore(64)
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as progress:
                task = progress.add_task("workflows through the router", total=total)

                async def one(i: int) -> None:
                    name, payload = inputs[i % len(inputs)](i)
                    async with sem:
                        t0 = time.perf_counter()
                        started = await client.start(name, payload, id=f"demo-{stamp}-{i}")
                        await client.result(started["id"], timeout=60)
                        latencies.append(time.perf_counter() - t0)
                        progress.advance(task)

                t0 = time.perf_counter()
                await asyncio.gather(*(one(i) for i in range(total)))
                elapsed = time.perf_counter() - t0
        for wid in shown.values():
            await client.wait(wid, timeout=60)
        outcomes = {label: await client.status(wid) for label, wid in shown.items()}
        cluster = await client.cluster()
    latencies.sort()
    table = Table(title="demo summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    if latencies:
        table.add_row("workflows completed", str(total))
        table.add_row("throughput (64 clients, start + long-poll)", f"{total / elapsed:.0f} wf/s")
        table.add_row("start-to-result p50", f"{latencies[len(latencies) // 2] * 1000:.1f} ms")
        p99 = latencies[int(len(latencies) * 0.99)]
        table.add_row("start-to-result p99", f"{p99 * 1000:.1f} ms")
    for shard in cluster["shards"]:
        table.add_row(f"{shard['id']} slots", str(shard["slots"]))
    for label, doc in outcomes.items():
        undo = ", ".join(doc.get("compensations") or []) or "none"
        table.add_row(label, f"{doc['status']}; compensations: {undo}")
    console.print(table)
