"""Cluster benchmarks: W3 through the router of a local cluster, and growing it under load.

Each starts a whole `shardflow dev`-style cluster (durable Postgres servers, executor,
router and coordinator processes) in a temporary folder and drives it with the asyncio
load generator in its own process (`loadtests.loadgen`), so the figures include every
Shardflow process and exclude the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from loadtests.cpu import parts_spent, tree_cpu_parts
from shardflow.devcluster.dev import DevCluster, DevSettings
from shardflow.devcluster.launcher import free_port, remove_data
from shardflow.devcluster.local_shard import LocalShard
from shardflow.infra import pool as shard_pool


@contextmanager
def bench_data() -> Iterator[Path]:
    """A temporary folder for a benchmark's servers (which run as an unprivileged user
    when started as root, hence its mode), removed afterwards."""
    data = Path(tempfile.mkdtemp(prefix="shardflow-bench-", dir="/tmp"))
    os.chmod(data, 0o755)
    try:
        yield data
    finally:
        remove_data(data)


@asynccontextmanager
async def local_shard(apps: list[str]) -> AsyncIterator[LocalShard]:
    """One started local shard (durable Postgres, migrated) in a temporary folder; its
    executors (``spawn_executor``) and server are stopped and the folder removed after."""
    with bench_data() as data:
        shard = LocalShard(data, apps=apps)
        try:
            await shard.start()
            yield shard
        finally:
            shard.stop()


@asynccontextmanager
async def local_cluster(**settings: Any) -> AsyncIterator[DevCluster]:
    """A ready, supervised local cluster in a temporary folder, removed afterwards."""
    with bench_data() as data:
        values = {
            "app": ["examples.bench"],
            "port": str(free_port()),
            "data": str(data),
            **{k: str(v) for k, v in settings.items()},
        }
        cluster = DevCluster(DevSettings.load(values, env={}))
        stop = asyncio.Event()
        supervisor = None
        try:
            await cluster.start()
            supervisor = asyncio.create_task(cluster.supervise(stop))
            await cluster.wait_ready()
            yield cluster
        finally:
            stop.set()
            if supervisor is not None:
                await supervisor
            cluster.stop()


@dataclass
class Phase:
    """One load phase: the load generator's summary (its last JSON line) and the CPU
    seconds the system (our other children) used meanwhile, in all and by part."""

    summary: dict[str, Any]
    cpu: float
    cpu_parts: dict[str, float]

    def ms_per_wf(self) -> dict[str, float | None]:
        """CPU milliseconds per completed workflow: ``all`` and each part."""
        done = self.summary.get("completed") or 0
        per = {"all": self.cpu, **self.cpu_parts}
        return {k: round(1000 * v / done, 3) if done else None for k, v in per.items()}


async def loadgen_phase(module: str, *args: str, until: Awaitable[Any] | None = None) -> Phase:
    """Run a load generator (``python -m module args``) in its own process and measure
    the system meanwhile. With ``until``, the phase ends (SIGTERM) once that is done, if
    it has not already."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    before = tree_cpu_parts([os.getpid()], exclude=[proc.pid])
    talk = asyncio.ensure_future(proc.communicate())
    if until is not None:
        stop = asyncio.ensure_future(until)
        await asyncio.wait([talk, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    out, err = await talk
    parts = parts_spent(before, tree_cpu_parts([os.getpid()], exclude=[proc.pid]))
    for line in reversed(out.decode(errors="replace").splitlines()):
        if line.startswith("{"):  # a client library may print its own lines before ours
            return Phase(json.loads(line), sum(parts.values()), parts)
    raise RuntimeError(
        f"the load generator {module} failed (exit {proc.returncode}): "
        + err.decode(errors="replace")[-2000:]
    )


def brief(summary: dict[str, Any]) -> dict[str, Any]:
    """A load phase's summary for people: without its 100 ms timeline."""
    return {k: v for k, v in summary.items() if k not in ("per_tenth", "started_unix")}


async def _loadgen(url: str, *extra: str, until: Awaitable[Any] | None = None) -> Phase:
    return await loadgen_phase("loadtests.loadgen", "--url", url, *extra, until=until)


@asynccontextmanager
async def otlp_sink() -> AsyncIterator[dict[str, int]]:
    """An OTLP/HTTP endpoint that takes every export and keeps only its count and bytes
    (the cost measured is the processes' tracing, not a collector's); while it runs, the
    processes this one starts export their traces to it (the OTEL_* variables)."""
    seen = {"exports": 0, "bytes": 0}

    async def take(request: web.Request) -> web.Response:
        seen["bytes"] += len(await request.read())
        seen["exports"] += 1
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    saved = {k: os.environ.get(k) for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER")}
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    os.environ["OTEL_TRACES_EXPORTER"] = "otlp"
    try:
        yield seen
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        await runner.cleanup()


async def http(args: argparse.Namespace) -> int:
    async with AsyncExitStack() as stack:
        sink = await stack.enter_async_context(otlp_sink()) if args.tracing else None
        code = await _http(args)
        if sink is not None:
            print(f"traces: {sink['exports']} OTLP exports, {sink['bytes'] / 1e6:.1f} MB")
        return code


async def _http(args: argparse.Namespace) -> int:
    async with local_cluster(
        shards=args.shards,
        executors_per_shard=args.executors_per_shard,
        coordinators=args.coordinators,
        fast_path=not args.no_fast_path,
    ) as cluster:
        url = cluster.router_urls[0]
        print("warming up 3 s ...", flush=True)
        await _loadgen(url, "--mode", "closed", "--clients", str(args.clients), "--seconds", "3")
        closed_phase = await _loadgen(
            url, "--mode", "closed", "--clients", str(args.clients), "--seconds", str(args.seconds)
        )
        closed = closed_phase.summary
        print(f"closed loop ({args.clients} clients): {brief(closed)}", flush=True)
        open_phase = await _loadgen(
            url, "--mode", "open", "--rate", str(args.rate), "--seconds", str(args.seconds)
        )
        opened = open_phase.summary
        print(f"open loop ({args.rate:g}/s): {brief(opened)}", flush=True)
    closed_cpu, open_cpu = closed_phase.ms_per_wf(), open_phase.ms_per_wf()
    print(
        f"CPU of all Shardflow processes (router, executors, Postgres) in the closed loop: "
        f"{closed_phase.cpu:.1f} s for {closed['completed']} workflows",
        flush=True,
    )
    for label, per in (("closed loop", closed_cpu), (f"open loop at {args.rate:g}/s", open_cpu)):
        print(
            f"CPU ms per workflow by part, {label}: "
            + ", ".join(f"{k} {v}" for k, v in per.items())
        )
    print(
        json.dumps(
            {
                "workload": "W3",
                "shards": args.shards,
                "tracing": args.tracing,
                "fast_path": not args.no_fast_path,
                "closed_wf_per_s": closed["wf_per_s"],
                "closed_p50_ms": closed["p50_ms"],
                "closed_p99_ms": closed["p99_ms"],
                "closed_p999_ms": closed["p999_ms"],
                "open_rate": args.rate,
                "open_p50_ms": opened["p50_ms"],
                "open_p99_ms": opened["p99_ms"],
                "open_p999_ms": opened["p999_ms"],
                "cpu_ms_per_wf": closed_cpu.pop("all"),
                "open_cpu_ms_per_wf": open_cpu.pop("all"),
                "cpu_ms_per_wf_by_part": closed_cpu,
                "open_cpu_ms_per_wf_by_part": open_cpu,
                "errors": closed["errors"] + opened["errors"],
            }
        )
    )
    return 0


# bench rebalance: seconds of load before the move starts; bound of the phase around it.
RAMP = 2.0
MAX_PHASE = 240.0


async def rebalance(args: argparse.Namespace) -> int:
    from loadtests.cgroups import ShardCaps
    from shardflow.catalog import admin as operations
    from shardflow.catalog.store import Catalog
    from shardflow.devcluster.dev import DATABASE, Child, executor_child
    from shardflow.devcluster.launcher import ensure_database

    # --cpu-per-shard 0: no groups at all (the shards share the machine)
    caps = ShardCaps(args.cpu_per_shard or None, f"shardflow-bench-{os.getpid()}")
    # caps outermost: its groups are removed once the cluster's processes have all ended
    # the fast path off: each shard's executor is a process inside its shard's cap
    settings = {"shards": 2, "slots": args.slots, "fast_path": False, "executors_per_shard": 1}
    async with caps, local_cluster(**settings) as cluster:
        caps.cap(cluster, "shard0", "shard1")
        url = cluster.router_urls[0]
        load = ["--mode", "closed", "--clients", str(args.clients)]
        await _loadgen(url, *load, "--seconds", "3")
        steady_phase = await _loadgen(url, *load, "--seconds", str(args.seconds))
        steady = steady_phase.summary
        print(f"steady on 2 shards: {brief(steady)}", flush=True)
        (server,) = cluster.pg.start("shard2")
        dsn = server.dsn(DATABASE)
        await ensure_database(server, DATABASE)
        catalog = await Catalog.connect(cluster.catalog_dsn)
        try:
            await catalog.add_shard("shard2", dsn)
            child = Child(
                executor_child("shard2", 0),
                [
                    sys.executable,
                    "-m",
                    "shardflow",
                    "executor",
                    "--dsn",
                    dsn,
                    "--shard",
                    "shard2",
                    "--catalog",
                    cluster.catalog_dsn,
                    "--app",
                    "examples.bench",
                ],
            )
            cluster.children.append(child)
            cluster._spawn(child)
            caps.cap(cluster, "shard2")
            # The new shard joins with its executor running, as an operator would add it:
            # the executor's start-up is not part of the rebalance being measured.
            await _executor_up(dsn)
            # One load phase spans the move (it ends when the move is done and it has run
            # for --seconds); the move starts once the load is under way, and its window
            # is cut from the phase's timeline by wall clock.
            moved = asyncio.Event()
            moving = asyncio.create_task(
                _loadgen(url, *load, "--seconds", str(MAX_PHASE), until=moved.wait())
            )
            phase_t0 = time.time()
            await asyncio.sleep(RAMP)
            t0 = time.time()
            planned = await operations.rebalance(catalog)
            while (await operations.status(catalog))["moves"]:  # noqa: ASYNC110 - polls the catalog
                await asyncio.sleep(0.1)
            t1 = time.time()
            await asyncio.sleep(max(0.0, phase_t0 + args.seconds - time.time()))
            moved.set()
            during_phase = await moving
            during = during_phase.summary
            print(f"during the move: {brief(during)}", flush=True)
            # The same load on the grown cluster, once every slot moved: what three shards
            # do on this machine, to tell the cost of moving from the cost of a third shard.
            after_phase = await _loadgen(url, *load, "--seconds", str(args.seconds))
            after = after_phase.summary
            print(f"after the move, 3 shards: {brief(after)}", flush=True)
            pauses = sorted(
                float(r["pause_ms"])
                for r in await catalog.moves_recent(1_000_000)
                if r["phase"] == "done" and r["pause_ms"] is not None
            )
            counts = await _ids_per_shard(catalog)
        finally:
            await catalog.close()
    from loadtests.loadgen import percentile, rate_between

    move_s = t1 - t0
    in_move = rate_between(during, t0, t1)
    print(f"{planned} slots moved in {move_s:.1f} s", flush=True)
    named = {"steady": steady_phase, "during": during_phase, "after": after_phase}
    phases = [phase.summary for phase in named.values()]
    cpu = {name: phase.ms_per_wf() for name, phase in named.items()}
    for name, phase in named.items():
        print(
            f"{name}: {phase.cpu / phase.summary['seconds']:.2f} cores busy; CPU ms per "
            "workflow by part: " + ", ".join(f"{k} {v}" for k, v in cpu[name].items()),
            flush=True,
        )
    print(
        json.dumps(
            {
                "steady_wf_per_s": steady["wf_per_s"],
                # Completions per second between the first move's start and the last
                # one's end, from the load phase's timeline.
                "during_move_wf_per_s": round(in_move, 1),
                "ratio": round(in_move / steady["wf_per_s"], 3) if steady["wf_per_s"] else 0.0,
                "after_move_wf_per_s": after["wf_per_s"],
                "ratio_to_after": round(in_move / after["wf_per_s"], 3)
                if after["wf_per_s"]
                else 0.0,
                # The whole load phase around the move (it starts RAMP s before the move).
                "phase_wf_per_s": during["wf_per_s"],
                "pause_p50_ms": round(percentile(pauses, 0.5), 1),
                "pause_p99_ms": round(percentile(pauses, 0.99), 1),
                "slots_moved": planned,
                "move_seconds": round(move_s, 2),
                # 0: the shards share the machine; else each one's CPU cap, in cores.
                "cpu_per_shard": args.cpu_per_shard,
                "capped_cpu_s": caps.used,
                # CPU ms per completed workflow of every Shardflow process in each load
                # phase (the one around the move includes its copies, deletes and vacuums).
                "cpu_ms_per_wf": {name: per["all"] for name, per in cpu.items()},
                "during_per_second": during["per_second"],
                "errors": sum(phase["errors"] for phase in phases),
                "lost": sum(
                    n
                    for phase in phases
                    for k, n in phase["error_kinds"].items()
                    if k.startswith("result")
                ),
                "duplicated": counts["duplicated"],
            }
        )
    )
    return 0


async def _executor_up(dsn: str, timeout: float = 60.0) -> None:
    """Until an executor has registered on the shard at ``dsn``."""
    deadline = time.monotonic() + timeout
    conn = await shard_pool.connect(dsn)
    try:
        while not await conn.fetchval("SELECT count(*) FROM shardflow.executors"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no executor registered on {dsn} within {timeout} s")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def _ids_per_shard(catalog: Any) -> dict[str, int]:
    """Workflows found on more than one shard (should be none)."""
    seen: dict[str, int] = {}
    for shard in await catalog.shards():
        conn = await shard_pool.connect(shard.dsn)
        try:
            for row in await conn.fetch("SELECT id FROM shardflow.workflows"):
                seen[row["id"]] = seen.get(row["id"], 0) + 1
        finally:
            await conn.close()
    return {"workflows": len(seen), "duplicated": sum(1 for n in seen.values() if n > 1)}
