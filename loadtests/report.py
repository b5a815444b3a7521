"""The comparison's files: results.csv, report.md and PNG plots (matplotlib, no screen)."""

from __future__ import annotations

import argparse
import csv
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PERCENTILES = ("p50_ms", "p95_ms", "p99_ms", "p999_ms")
# The columns of a row that were measured (the others name the phase; errors are counted).
MEASURED = ("seconds", "completed", "wf_per_s", *PERCENTILES, "cpu_s", "cpu_ms_per_wf")
COLUMNS = ("round", "system", "phase", "clients", "rate", "errors", *MEASURED, "cpu_parts")


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of ``rows``, with a round column when they come from several."""
    rounds = len({r["round"] for r in rows}) > 1
    head = [
        *(["round"] if rounds else []),
        "system",
        "phase",
        "wf/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "CPU ms/wf",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        phase = (
            f"closed ({r['clients']} clients)"
            if r["phase"] == "closed"
            else f"open ({r['rate']:g}/s)"
        )
        cells = [
            *([r["round"]] if rounds else []),
            r["system"],
            phase,
            r["wf_per_s"],
            *(r[p] for p in PERCENTILES),
            r["errors"],
            r["cpu_ms_per_wf"],
        ]
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})


def plots(out: Path, rows: Sequence[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = [r for r in rows if r["phase"] == "closed"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([r["system"] for r in closed], [r["wf_per_s"] for r in closed], color="#3b7dd8")
    ax.set_ylabel("workflows / s (closed loop)")
    ax.set_title("W3 throughput")
    for i, r in enumerate(closed):
        ax.annotate(f"{r['wf_per_s']:g}", (i, r["wf_per_s"]), ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, phase in zip(axes, ("closed", "open"), strict=True):
        chosen = [r for r in rows if r["phase"] == phase]
        width = 0.8 / max(1, len(chosen))
        for j, r in enumerate(chosen):
            xs = [i + j * width for i in range(len(PERCENTILES))]
            ax.bar(xs, [max(r[p] or 0.0, 0.01) for p in PERCENTILES], width, label=r["system"])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(PERCENTILES))])
        ax.set_xticklabels(["p50", "p95", "p99", "p99.9"])
        ax.set_yscale("log")
        ax.set_ylabel("start-to-result latency, ms (log)")
        ax.set_title(f"W3 latency, {phase} loop")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)
    return ["throughput.png", "latency.png"]


def write(
    out: Path,
    rows: Sequence[dict[str, Any]],
    medians: Sequence[dict[str, Any]],
    setups: Sequence[Any],
    args: argparse.Namespace,
    result: dict[str, Any],
) -> None:
    write_csv(out / "results.csv", rows)
    images = plots(out, medians)
    several = args.rounds > 1
    host = machine()
    lines = [
        "# Shardflow vs Temporal vs RabbitMQ: workload W3",
        "",
        "W3: input `{order_id, amount, pad (64 chars)}`, three sequential trivial steps, each "
        "durable in its system's own way. Latency is start to result, as the client sees it; "
        "in the open loop it is measured from the scheduled arrival.",
        "",
        "## Results" + (f" (medians over {args.rounds} rounds)" if several else ""),
        "",
        table(medians),
        "",
        "Ratios (closed-loop throughput): "
        + (", ".join(f"{k} = {v}" for k, v in result["ratios"].items()) or "none (one system)"),
        "",
        *(
            [
                f"The systems ran {args.rounds} rounds in turns, the order reversed every other "
                "round; every figure above is the median of its rounds. Ratios within each "
                "round: "
                + (
                    "; ".join(
                        f"{k} = {', '.join(str(v) for v in vs)}"
                        for k, vs in result["ratios_per_round"].items()
                    )
                    or "none (one system)"
                )
                + ".",
                "",
                "### Every round",
                "",
                table(rows),
                "",
            ]
            if several
            else []
        ),
        *(f"![{name}]({name})" for name in images),
        "",
        "### Where the CPU went",
        "",
        "CPU ms per workflow of each kind of process (by command line: `postgres`, the "
        "Shardflow commands, the baselines' server and worker programs):",
        "",
        *(
            f"- {r['system']}, {r['phase']} loop"
            + (f", round {r['round']}" if several else "")
            + f": {r['cpu_parts'] or '-'}"
            for r in rows
        ),
        "",
        "## Configuration",
        "",
        f"- closed loop: {args.clients} clients for {args.seconds:g} s "
        f"after a {args.warmup:g} s warm-up",
        f"- open loop: {args.open_rate:g} arrivals/s for {args.seconds:g} s; latency from each "
        "scheduled arrival; a workflow still unfinished 30 s after the last arrival counts as "
        "an error (`unfinished`), so a system slower than the rate cannot hold the run.",
        "- load generator: one asyncio process (`loadtests.loadgen`) drives every system the same "
        "way. The baselines' clients (temporalio, aio-pika) are asyncio libraries that do not run "
        "well under locust's gevent, so locust is kept for Shardflow's HTTP scenarios "
        "(`loadtests/locustfile.py`).",
        "- CPU ms per workflow: CPU time of the system's own processes (servers and workers, "
        "read from /proc, with their children that exit during the phase, such as "
        "autovacuum workers), load generator excluded, divided by the workflows completed "
        "in the phase.",
        "",
    ]
    for s in setups:
        versions = ", ".join(f"{k} {v}" for k, v in s.versions.items())
        lines += [f"- **{s.name}**: {s.configuration} Versions: {versions}."]
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in host.items()]
    lines += [
        "",
        "Figures from one run on one machine; compare them within this run only.",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
