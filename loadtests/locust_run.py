"""Run a locust scenario of ``loadtests/locustfile.py`` headless, bounded, and summarise it.

    python -m loadtests.locust_run --users 32 --seconds 20 [--user ShardflowBatchUser] [--url URL]

Without ``--url`` a local 3-shard cluster is started for the run and removed afterwards.
Prints locust's per-request table and, last, one JSON object with the scenario's rows
(requests, failures, per-second rate and percentiles in ms).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
USERS = ("ShardflowUser", "ShardflowBatchUser")


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def read_stats(path: Path) -> dict[str, dict[str, Any]]:
    """locust's ``*_stats.csv`` as {"TYPE name": figures}."""
    rows: dict[str, dict[str, Any]] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows[f"{r['Type']} {r['Name']}".strip()] = {
                "requests": int(r["Request Count"]),
                "failures": int(r["Failure Count"]),
                "per_s": round(float(r["Requests/s"]), 1),
                "p50_ms": _number(r["50%"]),
                "p95_ms": _number(r["95%"]),
                "p99_ms": _number(r["99%"]),
                "p999_ms": _number(r["99.9%"]),
            }
    return rows


async def run_locust(url: str, user: str, users: int, seconds: float) -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="shardflow-locust-") as folder:
        prefix = Path(folder) / "run"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--host",
            url,
            "--headless",
            "--users",
            str(users),
            "--spawn-rate",
            str(users),
            "--run-time",
            f"{max(1, round(seconds))}s",
            "--stop-timeout",
            "30",
            "--csv",
            str(prefix),
            "--only-summary",
            "--loglevel",
            "WARNING",
            user,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        await proc.wait()
        try:
            return read_stats(Path(f"{prefix}_stats.csv"))
        except FileNotFoundError:
            raise RuntimeError(f"locust wrote no statistics (exit {proc.returncode})") from None


async def main_async(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    if args.url:
        return await run_locust(args.url, args.user, args.users, args.seconds)
    from loadtests.bench_cluster import local_cluster

    async with local_cluster(shards=3) as cluster:
        return await run_locust(cluster.router_urls[0], args.user, args.users, args.seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="a running router (default: start a local cluster)")
    parser.add_argument("--user", choices=USERS, default="ShardflowUser")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.users < 1 or args.seconds <= 0:
        parser.error("--users and --seconds must be positive")
    rows = asyncio.run(main_async(args))
    for name, figures in rows.items():
        print(f"{name:32} {figures}", flush=True)
    print(json.dumps({"user": args.user, "users": args.users, "rows": rows}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
