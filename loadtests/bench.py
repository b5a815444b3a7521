"""`python -m loadtests.bench engine|http|rebalance|statements|recovery`: measured figures,
printed with a baseline from the same run.

(`bench http` and `bench rebalance` are in bench_cluster, `bench statements` in
bench_statements.)

engine: W3 workflows started in batches against one local shard with one executor
process, and the Postgres ceiling of the same server (pgbench doing what one
workflow minimally needs). recovery: SIGKILL an executor under load and time how
long its in-flight workflows take to checkpoint again on another executor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from examples.bench import make_input
from loadtests import bench_citus, bench_cluster, bench_statements
from loadtests.cpu import tree_cpu_parts
from shardflow.cli import run_command
from shardflow.devcluster.local_shard import LocalShard
from shardflow.infra import pool as shard_pool
from shardflow.shard.client import ShardClient, StartRequest

CEILING_SCRIPT = """\
INSERT INTO ceiling_wf (status, input) VALUES ('pending', '{"order_id": 1, "amount": 10.5, "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}');
INSERT INTO ceiling_steps (wf, seq, output) VALUES (currval('ceiling_wf_id_seq'), 0, '{"reserved": 1}');
INSERT INTO ceiling_steps (wf, seq, output) VALUES (currval('ceiling_wf_id_seq'), 1, '{"charged": 10.5}');
INSERT INTO ceiling_steps (wf, seq, output) VALUES (currval('ceiling_wf_id_seq'), 2, '{"notified": true}');
UPDATE ceiling_wf SET status = 'completed', output = '{"ok": true}' WHERE id = currval('ceiling_wf_id_seq');
"""  # noqa: E501

CEILING_SCHEMA = """
DROP TABLE IF EXISTS ceiling_wf, ceiling_steps;
CREATE TABLE ceiling_wf (id bigserial PRIMARY KEY, status text NOT NULL, input jsonb NOT NULL,
                         output jsonb, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE ceiling_steps (wf bigint NOT NULL, seq int NOT NULL, output jsonb,
                            PRIMARY KEY (wf, seq));
"""


def _cores(text: str) -> float:
    """A CPU cap in cores: 0 (none) or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of cores: {text!r}") from None
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"a CPU cap is 0 (none) or more cores, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description="benchmarks (figures and a same-run baseline)"
    )
    which = p.add_subparsers(dest="bench", required=True)
    e = which.add_parser("engine", help="W3 throughput of one shard vs the Postgres ceiling")
    e.add_argument("--seconds", type=float, default=20.0)
    e.add_argument(
        "--in-flight",
        type=int,
        default=256,
        help="unfinished workflows (queued or running) the loader keeps: the latency is about "
        "this over the throughput (Little's law); 256 saturates one shard here",
    )
    e.add_argument(
        "--executor-flag",
        action="append",
        default=[],
        help="extra flag for the executor, e.g. --executor-flag=--concurrency=1024",
    )
    e.add_argument(
        "--gc-backlog",
        type=int,
        default=0,
        help="insert this many day-old finished workflows before the window and run the GC "
        "every 0.2 s meanwhile (its impact: compare with a run without)",
    )
    e.set_defaults(handler=_engine)
    h = which.add_parser("http", help="W3 through the router of a local cluster")
    h.add_argument("--shards", type=int, default=3)
    h.add_argument("--clients", type=int, default=64)
    h.add_argument("--seconds", type=float, default=15.0)
    h.add_argument("--rate", type=float, default=200.0, help="arrivals/s of the open loop")
    h.add_argument(
        "--executors-per-shard",
        type=int,
        default=0,
        help="executor processes per shard, beside the router's own (the fast path)",
    )
    h.add_argument(
        "--no-fast-path",
        action="store_true",
        help="the router runs no executors (then --executors-per-shard 1 or more)",
    )
    h.add_argument(
        "--coordinators", type=int, default=1, help="0: no coordinator (its samples' cost)"
    )
    h.add_argument(
        "--tracing",
        action="store_true",
        help="routers and executors export every span over OTLP/HTTP to a sink here",
    )
    h.set_defaults(handler=bench_cluster.http)
    b = which.add_parser("rebalance", help="grow 2 -> 3 shards under load; pause per slot")
    b.add_argument("--seconds", type=float, default=15.0)
    b.add_argument("--clients", type=int, default=32)
    b.add_argument("--slots", type=int, default=256)
    b.add_argument(
        "--cpu-per-shard",
        type=_cores,
        default=0.0,
        help="cap each shard (its Postgres and executors) at this many cores in its own "
        "cgroup, as if each had a machine (needs root); 0: the shards share the machine",
    )
    b.set_defaults(handler=bench_cluster.rebalance)
    c = which.add_parser(
        "citus", help="W3 on a local Citus cluster vs plain shards; a worker added under load"
    )
    c.add_argument("--seconds", type=float, default=15.0)
    c.add_argument("--clients", type=int, default=64)
    c.add_argument("--workers", type=int, default=2, help="Citus workers before the one added")
    c.add_argument("--rate", type=float, default=50.0, help="arrivals/s of the open loop")
    c.set_defaults(handler=bench_citus.run)
    r = which.add_parser("recovery", help="seconds from SIGKILL to resumed checkpoints")
    r.add_argument("--seconds", type=float, default=5.0, help="steady load before the kill")
    r.set_defaults(handler=_recovery)
    bench_statements.add_parser(which)
    return p


def main(argv: list[str] | None = None) -> None:
    """Runs one benchmark with the CLI's loop and error handling: a ShardflowError (a bad
    argument found late, a failed benchmark) is one line and exit code 2."""
    args = build_parser().parse_args(argv)
    run_command(args.handler, args)


# Workflows started and not finished: queued, or leased to the executor (a start handed off
# to it never enters the queue); each count reads a partial index or the small queue.
UNFINISHED = """SELECT (SELECT count(*) FROM shardflow.ready)
    + (SELECT count(*) FROM shardflow.workflows WHERE status = 'running')"""


async def _load(client: ShardClient, seconds: float, in_flight: int, batch: int = 256) -> int:
    """Keep about ``in_flight`` workflows unfinished for ``seconds``; returns workflows
    started."""
    started = 0
    deadline = time.monotonic() + seconds
    async with client.pool.acquire() as conn:
        while time.monotonic() < deadline:
            depth = await conn.fetchval(UNFINISHED)
            room = in_flight - depth
            if room < batch // 4:
                await asyncio.sleep(0.005)
                continue
            n = min(room, batch)
            await client.start_many([StartRequest("w3", make_input(started + i)) for i in range(n)])
            started += n
    return started


BACKLOG_SQL = """
WITH wf AS (
    INSERT INTO shardflow.workflows (id, slot, routing_key, name, version, status, input,
                                     output, created_at, updated_at, finished_at)
    SELECT 'old-' || i, 0, 'old-' || i, 'w3', '1', 'completed', '{}', '{}',
           now() - interval '2 days', now() - interval '2 days', now() - interval '1 day'
    FROM generate_series(1, $1) AS i
    RETURNING id
)
INSERT INTO shardflow.steps (workflow_id, seq, name, status, output)
SELECT wf.id, n, 'step', 'completed', '{}' FROM wf, generate_series(0, 2) AS n
"""


async def _backlog(dsn: str, rows: int | None = None) -> int:
    """Insert ``rows`` finished workflows a day old (GC's work), or count those left."""
    conn = await shard_pool.connect(dsn)
    try:
        if rows is not None:
            await conn.execute(BACKLOG_SQL, rows)
        left = await conn.fetchval("SELECT count(*) FROM shardflow.workflows WHERE id LIKE 'old-%'")
        return int(left)
    finally:
        await conn.close()


async def _window_stats(dsn: str, t0: float, t1: float) -> dict[str, float]:
    conn = await shard_pool.connect(dsn)
    try:
        row = await conn.fetchrow(
            """SELECT count(*) AS n,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) AS p50,
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)) AS p99
               FROM shardflow.workflows
               WHERE status = 'completed' AND finished_at >= to_timestamp($1) AND finished_at < to_timestamp($2)""",  # noqa: E501
            t0,
            t1,
        )
    finally:
        await conn.close()
    assert row is not None
    n = row["n"] or 0
    return {
        "n": n,
        "wf_per_s": n / (t1 - t0),
        "p50_ms": float(row["p50"] or 0) * 1000,
        "p99_ms": float(row["p99"] or 0) * 1000,
    }


def _pgbench(shard: LocalShard, seconds: float) -> float:
    assert shard.server is not None
    binary = shard.cluster.bindir / "pgbench"
    path = str(binary) if binary.exists() else shutil.which("pgbench")
    if path is None:
        raise RuntimeError("pgbench not found")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(CEILING_SCRIPT)
    try:
        out = subprocess.run(
            [
                path,
                "-h",
                "127.0.0.1",
                "-p",
                str(shard.server.port),
                "-U",
                "postgres",
                "-n",
                "-c",
                "32",
                "-j",
                "2",
                "-T",
                str(max(1, int(seconds))),
                "-f",
                f.name,
                shard.database,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    match = re.search(r"tps = ([\d.]+)", out)
    return float(match[1]) if match else 0.0


async def _ceiling(shard: LocalShard, seconds: float) -> tuple[float, float]:
    """The Postgres ceiling (wf/s) and its server CPU ms per workflow, measured first, on
    the quiet server, so that nothing the engine's load leaves behind (its rows' vacuum,
    its checkpoint) counts against it."""
    conn = await shard_pool.connect(shard.dsn)
    try:
        await conn.execute(CEILING_SCHEMA)
        before = tree_cpu_parts([os.getpid()]).get("postgres", 0.0)
        tps = await asyncio.to_thread(_pgbench, shard, seconds)
        spent = tree_cpu_parts([os.getpid()]).get("postgres", 0.0) - before
        await conn.execute("DROP TABLE ceiling_wf, ceiling_steps")
        await conn.execute("CHECKPOINT")  # the engine's phase starts with nothing to write
    finally:
        await conn.close()
    done = tps * max(1, int(seconds))
    return tps, (spent * 1000 / done if done else 0.0)


async def _engine(args: argparse.Namespace) -> int:
    async with bench_cluster.local_shard(["examples.bench"]) as shard:
        ceiling, ceiling_cpu = await _ceiling(shard, args.seconds)
        print(
            f"postgres ceiling (pgbench -c 32 -j 2, 5 autocommit statements, first, on the "
            f"quiet server): {ceiling:.0f} wf/s, {ceiling_cpu:.3f} server CPU ms/wf",
            flush=True,
        )
        gc = ["--gc-interval=0.2", "--gc-retention=3600"] if args.gc_backlog else []
        shard.spawn_executor(*gc, *args.executor_flag)
        await shard.wait_registered("w3")
        client = await ShardClient.connect(shard.dsn)
        try:
            print("warming up 3 s ...", flush=True)
            await _load(client, 3.0, args.in_flight)
            if args.gc_backlog:
                print(f"GC backlog: {args.gc_backlog} finished workflows a day old", flush=True)
                await _backlog(shard.dsn, args.gc_backlog)
            t0 = time.time()
            started = await _load(client, args.seconds, args.in_flight)
            t1 = time.time()
        finally:
            await client.close()
        stats = await _window_stats(shard.dsn, t0, t1)
        if args.gc_backlog:
            removed = args.gc_backlog - await _backlog(shard.dsn)
            stats["gc_rows_per_s"] = removed / (t1 - t0)
            print(f"GC removed {removed} workflows (4 rows each) in the window", flush=True)
        print(
            f"shardflow: {stats['wf_per_s']:.0f} wf/s  p50 {stats['p50_ms']:.1f} ms  "
            f"p99 {stats['p99_ms']:.1f} ms  ({started} started in {t1 - t0:.1f} s)",
            flush=True,
        )
        shard.stop_executors()
    result = {
        "workload": "W3",
        "wf_per_s": round(stats["wf_per_s"], 1),
        "p50_ms": round(stats["p50_ms"], 2),
        "p99_ms": round(stats["p99_ms"], 2),
        "ceiling_wf_per_s": round(ceiling, 1),
        "ratio_to_ceiling": round(stats["wf_per_s"] / ceiling, 3) if ceiling else None,
        "ceiling_cpu_ms_per_wf": round(ceiling_cpu, 3),
    }
    if args.gc_backlog:
        result["gc_workflows_removed_per_s"] = round(stats["gc_rows_per_s"], 1)
    print(json.dumps(result))
    return 0


async def _recovery(args: argparse.Namespace) -> int:
    async with bench_cluster.local_shard(["examples.bench"]) as shard:
        victim = shard.spawn_executor()
        await shard.wait_registered("w3")
        survivor = shard.spawn_executor()
        client = await ShardClient.connect(shard.dsn)
        conn = await shard_pool.connect(shard.dsn)
        try:
            load = asyncio.create_task(_load(client, args.seconds + 10, 256))
            await asyncio.sleep(args.seconds)
            owner = await conn.fetchval(
                "SELECT owner FROM shardflow.executors WHERE pid = $1", victim.pid
            )
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.time()
            inflight = [
                r["id"]
                for r in await conn.fetch(
                    "SELECT id FROM shardflow.workflows "
                    "WHERE status = 'running' AND lease_owner = $1",
                    owner,
                )
            ]
            resumed: dict[str, float] = {}
            while len(resumed) < len(inflight) and time.time() - killed_at < 60:
                rows = await conn.fetch(
                    """SELECT workflow_id, extract(epoch FROM min(finished_at)) AS t
                       FROM shardflow.steps WHERE workflow_id = ANY($1::text[])
                         AND finished_at > to_timestamp($2) GROUP BY workflow_id""",
                    inflight,
                    killed_at,
                )
                resumed = {r["workflow_id"]: float(r["t"]) for r in rows}
                await asyncio.sleep(0.02)
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
        finally:
            await conn.close()
            await client.close()
        del survivor
        recovery = max(resumed.values()) - killed_at if resumed else None
        print(
            f"killed executor had {len(inflight)} workflows in flight; "
            f"{len(resumed)} resumed on the survivor",
            flush=True,
        )
    print(
        json.dumps(
            {
                "recovery_s": None if recovery is None else round(recovery, 3),
                "inflight": len(inflight),
                "resumed": len(resumed),
            }
        )
    )
    return 0


if __name__ == "__main__":
    main()
