"""The scale model: W3 throughput at 1, 2, 4 ... shards, each shard capped at the same CPU.

    python -m loadtests.scale --shards 1,2,4 --cpu-per-shard 0.15 --seconds 20

This machine cannot hold a fleet, so each shard (its Postgres server with every backend,
and its executor process: the fast path is off here, so that all of a shard's work is
inside its cap) runs in its own cgroup capped at ``--cpu-per-shard`` of a core (v1 or
v2; needs root). The router, the coordinator, the catalog and the load generator run
outside the caps. With ``--routers per-shard`` each shard's cap holds a router too, with
the fast path for that shard only (``router --executors-for``), and no executor process:
the load generator spreads the workflows over the routers, so each router serves a share
of every shard's starts and runs its own shard's workflows (``per-shard-home``: it sends
each workflow to its shard's router, by the slot map); only the coordinator, the catalog
and the load generator stay outside. At each step a closed loop of ``clients per shard``
times shards clients drives W3 through the router(s). The clients per shard are those
with which one capped shard reaches its own best throughput (``--clients-per-shard
auto``: the first step tries ``CANDIDATES`` and keeps the best), so that the one-shard
baseline is not held back by too few or too many clients and the efficiency reads at
most 1 when shards add nothing to each other (the baseline is the best one capped shard
was seen to do: its step, or its best probe when that did more). The report gives
throughput, the scaling efficiency ``T(n) / (n * T(1))``, the CPU used outside the caps
and how busy the machine was (a step that came near the machine's limit says so: its
efficiency then measures the machine, not Shardflow). Writes ``scale.csv`` and
``scale.png``; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.bench_cluster import _loadgen, local_cluster
from loadtests.cgroups import ShardCaps
from loadtests.compare import RESULTS

NEAR_LIMIT = 0.9  # of all cores busy
CANDIDATES = (4, 8, 16, 32, 64, 128, 256)  # clients per shard tried for the baseline, in turn
# A capped shard finishes more with more clients (bigger group commits) up to a point:
# the probes stop once a count does worse than this share of the best so far.
PAST_BEST = 0.95


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def _best_clients(url: str, args: argparse.Namespace) -> tuple[int, float]:
    """The clients with which the (one-shard) cluster at ``url`` finishes the most, and
    that rate: more, in turn, until two counts in a row do clearly worse than the best so
    far (one can, by the machine's noise alone)."""
    probe = max(1.0, args.seconds / 4)
    best, best_rate, worse = CANDIDATES[0], -1.0, 0
    for clients in CANDIDATES:
        loop = ["--mode", "closed", "--clients", str(clients), "--seconds", str(probe)]
        rate = float((await _loadgen(url, *loop)).summary["wf_per_s"])
        print(f"  baseline probe: {clients} clients, {rate} wf/s", flush=True)
        if rate > best_rate:
            best, best_rate, worse = clients, rate, 0
        elif rate < PAST_BEST * best_rate:
            worse += 1
            if worse == 2:
                break
    return best, best_rate


async def step(n: int, args: argparse.Namespace) -> dict[str, Any]:
    caps = ShardCaps(args.cpu_per_shard, f"shardflow-scale-{os.getpid()}")
    # caps outermost: its groups are removed once the cluster's processes have all ended
    cluster_settings: dict[str, Any] = {"shards": n, "fast_path": False, "executors_per_shard": 1}
    if args.routers != "one":
        cluster_settings = {"shards": n, "routers": n, "home_shards": True}
    async with caps, local_cluster(**cluster_settings) as cluster:
        caps.cap(cluster, *(f"shard{i}" for i in range(n)))
        groups = list(caps.groups.values())
        url = ",".join(cluster.router_urls)
        if args.routers == "per-shard-home":  # each workflow to its shard's router
            homes = zip(cluster.shard_dsns, cluster.router_urls, strict=True)
            url = ",".join(f"{shard}={router}" for shard, router in homes)
        if args.clients_per_shard is None:
            await _loadgen(url, "--mode", "closed", "--clients", "8", "--seconds", str(args.warmup))
            args.clients_per_shard, args.probed = await _best_clients(url, args)
        clients = ["--mode", "closed", "--clients", str(args.clients_per_shard * n)]
        await _loadgen(url, *clients, "--seconds", str(args.warmup))
        capped0 = [g.usage() for g in groups]
        throttled0 = [g.throttled() for g in groups]
        busy0, t0 = machine_busy(), time.monotonic()
        summary = (await _loadgen(url, *clients, "--seconds", str(args.seconds))).summary
        elapsed = time.monotonic() - t0
        busy = (machine_busy() - busy0) / elapsed
        capped = [(g.usage() - u) / elapsed for g, u in zip(groups, capped0, strict=True)]
        throttled = sum(g.throttled() - t for g, t in zip(groups, throttled0, strict=True))
    cores = os.cpu_count() or 1
    return {
        "shards": n,
        "routers": args.routers,
        "clients": args.clients_per_shard * n,
        "clients_per_shard": args.clients_per_shard,
        "wf_per_s": summary["wf_per_s"],
        "p99_ms": summary["p99_ms"],
        "errors": summary["errors"],
        "capped_cores": round(sum(capped), 3),
        "cap_cores": round(args.cpu_per_shard * n, 3),
        "throttled_periods": throttled,
        # Router, coordinator, catalog, load generator and whatever else ran on the machine.
        "outside_cores": round(max(0.0, busy - sum(capped)), 3),
        "machine_busy_cores": round(busy, 3),
        "near_machine_limit": busy >= NEAR_LIMIT * cores,
    }


def write_csv(path: Path, steps: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(steps[0]))
        writer.writeheader()
        writer.writerows(steps)


def plot(out: Path, steps: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shards = [s["shards"] for s in steps]
    base = steps[0]["baseline_wf_per_s"] / steps[0]["shards"] if steps[0]["shards"] else 0
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(shards, [s["wf_per_s"] for s in steps], "o-", label="measured")
    ax.plot(
        shards, [base * n for n in shards], "--", color="grey", label="linear from the first step"
    )
    for s in steps:
        ax.annotate(
            f"eff {s['efficiency']:.2f}",
            (s["shards"], s["wf_per_s"]),
            textcoords="offset points",
            xytext=(0, 8),
        )
    ax.set_xlabel("shards (each capped at the same CPU)")
    ax.set_ylabel("W3 workflows / s")
    ax.set_xticks(shards)
    ax.set_title("Shardflow scale model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=100)
    plt.close(fig)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shards", default="1,2,4", help="shard counts, comma-separated, ascending"
    )
    parser.add_argument(
        "--cpu-per-shard", type=float, default=0.15, help="cores per shard's cgroup"
    )
    parser.add_argument(
        "--clients-per-shard",
        default="auto",
        help="clients per shard, or auto: those of the one-shard baseline's best throughput",
    )
    parser.add_argument(
        "--routers",
        choices=("one", "per-shard", "per-shard-home"),
        default="one",
        help="one router outside the caps (executor processes inside), or one router per "
        "shard inside its cap, running that shard's workflows (the fast path): the load "
        "spread over the routers, or (per-shard-home) each workflow sent to its shard's",
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        args.shards = [int(x) for x in args.shards.split(",") if x.strip()]
    except ValueError:
        parser.error("--shards: comma-separated whole numbers, such as 1,2,4")
    if not args.shards or min(args.shards) < 1 or args.shards != sorted(set(args.shards)):
        parser.error("--shards: positive, ascending, without repeats")
    if args.clients_per_shard == "auto":
        args.clients_per_shard = None
        if args.shards[0] != 1:
            parser.error("--clients-per-shard auto measures the baseline: --shards starts at 1")
    else:
        try:
            args.clients_per_shard = int(args.clients_per_shard)
        except ValueError:
            parser.error("--clients-per-shard: a whole number or auto")
        if args.clients_per_shard < 1:
            parser.error("--clients-per-shard must be positive")
    if args.cpu_per_shard <= 0 or args.seconds <= 0:
        parser.error("--cpu-per-shard and --seconds must be positive")
    return args


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out = args.out or RESULTS / (datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-scale")
    out.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []
    args.probed = 0.0  # the best probe's rate, when the first step probes (one shard)
    per_shard = 0.0
    for n in args.shards:
        result = await step(n, args)
        if not steps:
            # The baseline is the best the first step was seen to do: its run, or its best
            # probe when that was more (a capped shard's throughput drifts from run to run,
            # and a baseline held back by a slow run would read as efficiency above 1).
            result["baseline_wf_per_s"] = max(result["wf_per_s"], args.probed * n)
            per_shard = result["baseline_wf_per_s"] / n
        result["efficiency"] = round(result["wf_per_s"] / (n * per_shard), 3) if per_shard else 0.0
        steps.append(result)
        note = "  NEAR THE MACHINE'S LIMIT" if result["near_machine_limit"] else ""
        print(
            f"{n} shard(s): {result['wf_per_s']} wf/s, efficiency {result['efficiency']}, "
            f"capped {result['capped_cores']}/{result['cap_cores']} cores, outside the caps "
            f"{result['outside_cores']} cores, machine busy {result['machine_busy_cores']}{note}",
            flush=True,
        )
    write_csv(out / "scale.csv", steps)
    plot(out, steps)
    print(f"results in {out}", flush=True)
    return {
        "cpu_per_shard": args.cpu_per_shard,
        "routers": args.routers,
        "steps": steps,
        "efficiency": {str(s["shards"]): s["efficiency"] for s in steps},
    }


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(asyncio.run(main_async(parse(argv)))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
