"""`bench citus`: W3 through the router on a local Citus cluster against plain shards, then
a Citus worker added under load and the schemas rebalanced onto it.

Both clusters are `shardflow dev`-style (durable servers, executor, router and coordinator
processes), measured one after the other in the same run with the same load generator:
3 plain shards, then a Citus coordinator with 2 workers holding 4 shard schemas. Then a
third worker joins and ``citus_rebalance_start()`` moves schemas to it while the load
runs; a probe writes to every schema each 10 ms, and the longest wait of a moved schema's
probe is its write pause.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import asyncpg

from loadtests.bench_cluster import Phase, _loadgen, brief, local_cluster
from shardflow.coordinator import citus
from shardflow.devcluster.dev import DevCluster

PROBE_EVERY = 0.01
SCHEMAS = 4


async def _measure(
    cluster: DevCluster, args: argparse.Namespace, label: str
) -> tuple[Phase, Phase]:
    """The closed loop (throughput), then an open loop at a low rate (latency when idle:
    every hand-off and outcome by NOTIFY)."""
    url = cluster.router_urls[0]
    load = ["--mode", "closed", "--clients", str(args.clients)]
    await _loadgen(url, *load, "--seconds", "3")
    closed = await _loadgen(url, *load, "--seconds", str(args.seconds))
    print(f"{label}, closed loop: {brief(closed.summary)}", flush=True)
    opened = await _loadgen(
        url, "--mode", "open", "--rate", str(args.rate), "--seconds", str(args.seconds)
    )
    print(f"{label}, open loop at {args.rate:g}/s: {brief(opened.summary)}", flush=True)
    return closed, opened


def _figures(phases: tuple[Phase, Phase]) -> dict[str, Any]:
    closed, opened = phases
    per = closed.ms_per_wf()
    return {
        "wf_per_s": closed.summary["wf_per_s"],
        "p50_ms": closed.summary["p50_ms"],
        "p99_ms": closed.summary["p99_ms"],
        "cpu_ms_per_wf": per.pop("all"),
        "cpu_ms_per_wf_by_part": per,
        "open_p50_ms": opened.summary["p50_ms"],
        "open_p99_ms": opened.summary["p99_ms"],
    }


async def _probe(dsn: str, schema: str, stop: asyncio.Event, worst: dict[str, float]) -> None:
    """Write to ``schema`` every PROBE_EVERY s through the coordinator; keep the longest."""
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            await conn.execute(f"UPDATE {schema}.settings SET value = value WHERE key = 'slots'")
            worst[schema] = max(worst.get(schema, 0.0), time.perf_counter() - t0)
            await asyncio.sleep(PROBE_EVERY)
    finally:
        await conn.close()


async def _placement(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT DISTINCT split_part(table_name::text, '.', 1) AS schema, nodeport "
        "FROM citus_shards WHERE table_name::text LIKE 'shardflow_s%'"
    )
    return {r["schema"]: r["nodeport"] for r in rows}


async def _repeated(conn: asyncpg.Connection) -> int:
    """Workflows that ran a step twice or were taken back from an executor."""
    total = 0
    for k in range(1, SCHEMAS + 1):
        total += int(
            await conn.fetchval(
                f"SELECT count(*) FROM shardflow_s{k}.workflows w "
                f"WHERE w.attempt > 0 OR EXISTS (SELECT FROM shardflow_s{k}.steps s "
                "WHERE s.workflow_id = w.id AND s.attempts > 1)"
            )
        )
    return total


async def _grow(cluster: DevCluster, args: argparse.Namespace) -> dict[str, Any]:
    """A third worker, then the rebalance under load: schemas moved, pause, lost, repeated."""
    coordinator = cluster.catalog_dsn
    (server,) = cluster.pg.start(f"citus-worker{args.workers + 1}")
    await citus.add_nodes(coordinator, None, (f"127.0.0.1:{server.port}",))
    conn = await asyncpg.connect(coordinator)
    stop = asyncio.Event()
    worst: dict[str, float] = {}
    try:
        before = await _placement(conn)
        probes = [
            asyncio.create_task(_probe(coordinator, schema, stop, worst)) for schema in before
        ]
        moved = asyncio.Event()
        load = ["--mode", "closed", "--clients", str(args.clients), "--seconds", "300"]
        loading = asyncio.create_task(_loadgen(cluster.router_urls[0], *load, until=moved.wait()))
        await asyncio.sleep(2.0)
        t0 = time.monotonic()
        await conn.execute("SELECT citus_rebalance_start()")
        await conn.execute("SELECT citus_rebalance_wait()")
        seconds = time.monotonic() - t0
        await asyncio.sleep(2.0)
        moved.set()
        phase = await loading
        stop.set()
        await asyncio.gather(*probes)
        after = await _placement(conn)
        repeated = await _repeated(conn)
    finally:
        stop.set()
        await conn.close()
    shifted = sorted(s for s in before if after.get(s) != before[s])
    pauses = sorted(1000 * worst[s] for s in shifted)
    print(
        f"rebalance: {len(shifted)} schema(s) moved in {seconds:.1f} s under load "
        f"({brief(phase.summary)}); longest write wait per moved schema (ms): "
        + ", ".join(f"{s} {1000 * worst[s]:.0f}" for s in shifted),
        flush=True,
    )
    return {
        "schemas_moved": len(shifted),
        "seconds": round(seconds, 2),
        "pause_p99_ms": round(pauses[-1], 1) if pauses else 0.0,
        "lost": sum(n for k, n in phase.summary["error_kinds"].items() if k.startswith("result")),
        "duplicated": repeated,
    }


async def run(args: argparse.Namespace) -> int:
    async with local_cluster(shards=3) as plain_cluster:
        plain = await _measure(plain_cluster, args, "3 plain shards")
    async with local_cluster(citus="true", workers=args.workers, shards=SCHEMAS) as cluster:
        on_citus = await _measure(
            cluster, args, f"Citus, {args.workers} workers, {SCHEMAS} shard schemas"
        )
        grown = await _grow(cluster, args)
    p, c = _figures(plain), _figures(on_citus)
    print(
        json.dumps(
            {
                "citus": c,
                "plain": p,
                "ratio_to_plain": round(c["wf_per_s"] / p["wf_per_s"], 3) if p["wf_per_s"] else 0,
                "rebalance": grown,
            }
        )
    )
    return 0
