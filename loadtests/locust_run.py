"""Run locust scenarios of ``loadtests/locustfile.py`` headless, bounded, and summarise them.

    python -m loadtests.locust_run --users 32 --seconds 20 [--user ShardflowBatchUser] [--url URL]
    python -m loadtests.locust_run --systems shardflow,temporal,rabbitmq --users 64 --seconds 30

Without ``--url`` a local 3-shard cluster is started for the run and removed afterwards.
With ``--systems``, each system is started as ``loadtests.compare`` starts it (the same
durable configurations) and driven by its own user class in turn; locust's CSV and HTML
reports of each go to ``--out`` (default ``results/locust-<timestamp>``) and the last lines
are a table of the workflows (``WORKFLOW start_to_result``) of every system.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
USERS = ("ShardflowUser", "ShardflowBatchUser", "TemporalUser", "RabbitUser")
# The user class that drives each system of --systems, and where its host comes from.
SYSTEM_USERS = {"shardflow": "ShardflowUser", "temporal": "TemporalUser", "rabbitmq": "RabbitUser"}
RESULTS = Path("results")


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


async def run_locust(
    url: str, user: str, users: int, seconds: float, keep: Path | None = None
) -> dict[str, dict[str, Any]]:
    """Run ``user`` against ``url``; ``keep``: a folder for locust's CSV and HTML reports."""
    with tempfile.TemporaryDirectory(prefix="shardflow-locust-") as folder:
        prefix = (keep or Path(folder)) / (user if keep else "run")
        html = ["--html", f"{prefix}.html"] if keep else []
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
            *html,
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


async def run_systems(
    systems: list[str], users: int, seconds: float, out: Path
) -> dict[str, dict[str, Any]]:
    """Each system started fresh, driven by its locust user, stopped: its workflow figures."""
    from loadtests.systems import SYSTEMS

    figures = {}
    for name in systems:
        async with SYSTEMS[name]() as running:
            host = running.http or running.target
            keep = out / name
            keep.mkdir(parents=True, exist_ok=True)
            rows = await run_locust(host, SYSTEM_USERS[name], users, seconds, keep)
            figures[name] = rows.get("WORKFLOW start_to_result", {})
            print(f"[{name}] {figures[name]}", flush=True)
    return figures


def table(figures: dict[str, dict[str, Any]], users: int) -> str:
    lines = [
        f"| system | workflows/s ({users} users) | p50 ms | p95 ms | p99 ms | failures |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in figures.items():
        lines.append(
            f"| {name} | {f.get('per_s')} | {f.get('p50_ms')} | {f.get('p95_ms')} | "
            f"{f.get('p99_ms')} | {f.get('failures')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="a running router (default: start a local cluster)")
    parser.add_argument("--user", choices=USERS, default="ShardflowUser")
    parser.add_argument(
        "--systems", help=f"run these systems in turn: {', '.join(SYSTEM_USERS)} (not --url)"
    )
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, help="folder of the reports (with --systems)")
    args = parser.parse_args(argv)
    if args.users < 1 or args.seconds <= 0:
        parser.error("--users and --seconds must be positive")
    if args.systems is not None:
        systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        if not systems or any(s not in SYSTEM_USERS for s in systems) or args.url:
            parser.error(f"--systems: some of {', '.join(SYSTEM_USERS)}, without --url")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = args.out or RESULTS / f"locust-{stamp}"
        figures = asyncio.run(run_systems(systems, args.users, args.seconds, out))
        print(table(figures, args.users), flush=True)
        print(f"locust reports in {out}", flush=True)
        print(json.dumps({"users": args.users, "systems": figures}), flush=True)
        return 0
    rows = asyncio.run(main_async(args))
    for name, figures in rows.items():
        print(f"{name:32} {figures}", flush=True)
    print(json.dumps({"user": args.user, "users": args.users, "rows": rows}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
