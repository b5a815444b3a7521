"""Shardflow against Temporal and RabbitMQ on this machine: W3, one load generator, one run.

    python -m loadtests.compare --systems shardflow,temporal,rabbitmq --clients 64 --seconds 30

For each system, started fresh and stopped afterwards: a short warm-up, a closed-loop
phase (``--clients`` clients, each starting W3 and waiting for its result, in a loop) and
an open-loop phase (``--open-rate`` arrivals per second). Each phase runs the load
generator (``loadtests.loadgen``) in its own process; CPU per workflow counts the
system's own processes only (servers and workers). Results go to
``loadtests/results/<timestamp>/`` (results.csv, report.md, PNG plots); the table is
printed, and the last line is one JSON object.

``--rounds N`` measures every system N times, round after round, in turns (the order
reverses every other round, so that no system always runs first): a machine whose speed
drifts within minutes then weighs on every system alike. The JSON figures are each
system's medians over the rounds, and ``ratios_per_round`` pairs the systems measured in
the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests import report
from loadtests.bench_cluster import Phase, brief, loadgen_phase
from loadtests.systems import SYSTEMS, Running

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("closed", "open")


async def loadgen(running: Running, *extra: str) -> Phase:
    """One phase in a load generator process: its summary and the system's CPU."""
    return await loadgen_phase(
        "loadtests.loadgen", "--system", running.name, "--target", running.target, *extra
    )


async def ready(running: Running, timeout: float = 120.0) -> None:
    """Until one workflow goes through end to end (servers and workers all up)."""
    deadline = time.monotonic() + timeout
    while True:
        phase = await loadgen(running, "--mode", "closed", "--clients", "1", "--seconds", "0.5")
        if phase.summary["completed"]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{running.name}: no workflow completed within {timeout:.0f} s")
        await asyncio.sleep(1)


def row(
    system: str, phase: str, measured: Phase, args: argparse.Namespace, round_: int = 1
) -> dict[str, Any]:
    summary = measured.summary
    done = summary["completed"]
    per_wf = measured.ms_per_wf()
    return {
        "round": round_,
        "system": system,
        "phase": phase,
        "clients": args.clients if phase == "closed" else "",
        "rate": args.open_rate if phase == "open" else "",
        "seconds": summary["seconds"],
        "completed": done,
        "errors": summary["errors"],
        "wf_per_s": summary["wf_per_s"],
        # No latency without a completed workflow (not 0 ms).
        **{p: summary[p] if done else None for p in report.PERCENTILES},
        "cpu_s": round(measured.cpu, 3),
        "cpu_ms_per_wf": per_wf.pop("all"),
        # Where that CPU went: ms per workflow of each process kind, largest first.
        "cpu_parts": "; ".join(
            f"{part} {per_wf[part]:.3f}"
            for part, spent in sorted(measured.cpu_parts.items(), key=lambda kv: -kv[1])
            if spent > 0
        )
        if done
        else "",
    }


async def measure(
    name: str, args: argparse.Namespace, rows: list[dict[str, Any]], round_: int = 1
) -> Running:
    async with SYSTEMS[name]() as running:
        print(f"[{name}] round {round_}, started: {running.target}", flush=True)
        await ready(running)
        clients = ["--clients", str(args.clients)]
        await loadgen(running, "--mode", "closed", *clients, "--seconds", str(args.warmup))
        closed = await loadgen(
            running, "--mode", "closed", *clients, "--seconds", str(args.seconds)
        )
        rows.append(row(name, "closed", closed, args, round_))
        print(f"[{name}] closed loop: {brief(closed.summary)}", flush=True)
        opened = await loadgen(
            running, "--mode", "open", "--rate", str(args.open_rate), "--seconds", str(args.seconds)
        )
        rows.append(row(name, "open", opened, args, round_))
        print(f"[{name}] open loop: {brief(opened.summary)}", flush=True)
    return running


# The JSON figures of a system: (key, phase, column of its rows).
FIGURES = (
    ("closed_wf_per_s", "closed", "wf_per_s"),
    ("closed_p99_ms", "closed", "p99_ms"),
    ("cpu_ms_per_wf", "closed", "cpu_ms_per_wf"),
    ("open_p99_ms", "open", "p99_ms"),
)


def _median(values: list[Any]) -> Any:
    """The median, rounded as the figures are (that of an even count is a mean: 3 places)."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per system and phase: each figure's median over the rounds (the rows
    themselves when there was one round)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["system"], r["phase"]), []).append(r)
    out = []
    for group in groups.values():
        first = dict(group[0])
        for key in report.MEASURED:
            first[key] = _median([g[key] for g in group])
        first["errors"] = sum(g["errors"] for g in group)
        if len(group) > 1:
            first["round"] = "median"
            first["cpu_parts"] = ""  # each round's row has its own
        out.append(first)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def summary_json(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    systems: dict[str, dict[str, Any]] = {}
    for r in medians(rows):
        s = systems.setdefault(r["system"], {"errors": 0})
        s["errors"] += r["errors"]
        for key, phase, column in FIGURES:
            if r["phase"] == phase:
                s[key] = r[column]
        if r["phase"] == "open":
            s["open_rate"] = args.open_rate
    others = [
        o for o in ("rabbitmq", "temporal", "dbos") if "shardflow" in systems and o in systems
    ]
    ratios = {
        f"shardflow/{o}": ratio
        for o in others
        if (ratio := _ratio(systems["shardflow"]["closed_wf_per_s"], systems[o]["closed_wf_per_s"]))
        is not None
    }
    result: dict[str, Any] = {"systems": systems, "ratios": ratios}
    rounds = sorted({r["round"] for r in rows})
    if len(rounds) > 1:
        closed = {(r["round"], r["system"]): r["wf_per_s"] for r in rows if r["phase"] == "closed"}
        result["rounds"] = len(rounds)
        result["ratios_per_round"] = {
            f"shardflow/{o}": [
                _ratio(closed.get((n, "shardflow")), closed.get((n, o))) for n in rounds
            ]
            for o in others
        }
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", default="shardflow,temporal,rabbitmq,dbos")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--open-rate", type=float, default=200.0)
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="closed-loop seconds before measuring"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every system this many times, in turns; figures are medians",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: results/<timestamp>)"
    )
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown or not args.systems:
        parser.error(
            f"--systems: choose among {', '.join(SYSTEMS)} (got {', '.join(unknown) or 'none'})"
        )
    if (
        args.clients < 1
        or args.rounds < 1
        or args.seconds <= 0
        or args.open_rate <= 0
        or args.warmup < 0
    ):
        parser.error(
            "--clients, --rounds, --seconds and --open-rate must be positive, --warmup not negative"
        )
    return args


async def main_async(args: argparse.Namespace) -> int:
    out = args.out or RESULTS / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    setups: dict[str, Running] = {}
    for n in range(1, args.rounds + 1):
        for name in args.systems if n % 2 else reversed(args.systems):
            running = await measure(name, args, rows, n)
            setups.setdefault(name, running)
    result = summary_json(rows, args)
    per_system = medians(rows)
    report.write(out, rows, per_system, [setups[name] for name in args.systems], args, result)
    print(report.table(rows), flush=True)
    if args.rounds > 1:
        print(f"medians over {args.rounds} rounds:", flush=True)
        print(report.table(per_system), flush=True)
    print(f"results in {out}", flush=True)
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
