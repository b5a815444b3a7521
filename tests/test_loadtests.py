"""Smoke runs of the benchmarks in loadtests/: real servers, small loads, no speed asserted.

Each run checks that the figures, the CSV, the report and the plots are produced and agree
with one another; how fast anything went is the benchmarks' business, not the tests'.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loadtests import bench, compare, report, scale
from loadtests.bench_cluster import Phase, local_cluster
from loadtests.cgroups import CgroupError, CpuGroup
from loadtests.cpu import part_of, parts_spent, tree_cpu_parts
from loadtests.loadgen import HttpDriver, rate_between
from loadtests.locust_run import run_locust
from shardflow.shard.client import ShardClient
from shardflow.shard.slots import slot_of
from shardflow.shard.store import ShardStore

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"

# An executor that takes every w3 handed off at its start (no process behind it).
OPEN_STAND_IN = """INSERT INTO shardflow.executors
    (owner, lock_key, lease_until, kinds, handoff_until)
VALUES ('stand-in', 7, now() + interval '1 minute', '{w3@1}', now() + interval '1 minute')"""


def run_module(module: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """Run ``python -m module args``; its last stdout line, parsed as JSON."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_refused(module: str, *args: str) -> str:
    """Run ``python -m module args``, which must refuse them: exit code 2 (an argument
    argparse rejects, or a ShardflowError) and no traceback. Its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


def rounding_slack(num: float, den: float, num_step: float, den_step: float, step: float) -> float:
    """How far a ratio a bench takes before rounding (then rounds to ``step``) can lie from
    ``num / den``, the two figures as printed (rounded to ``num_step`` and ``den_step``;
    0: printed as used): half a unit of each rounding."""
    return step / 2 + num / den * (num_step / 2 / num + den_step / 2 / den)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG


@pytest.mark.timeout(900)
def test_compare_runs_every_system_and_writes_consistent_results(tmp_path: Path) -> None:
    """Shardflow, Temporal, RabbitMQ and DBOS: a smoke test of a few workflows each."""
    out = tmp_path / "results"
    result = run_module(
        "loadtests.compare",
        "--systems",
        "shardflow,temporal,rabbitmq,dbos",
        "--clients",
        "4",
        "--seconds",
        "2",
        "--open-rate",
        "5",
        "--warmup",
        "0.5",
        "--out",
        str(out),
    )
    rows = read_csv(out / "results.csv")
    assert [(r["system"], r["phase"]) for r in rows] == [
        (s, p) for s in ("shardflow", "temporal", "rabbitmq", "dbos") for p in ("closed", "open")
    ]
    assert set(result["systems"]) == {"shardflow", "temporal", "rabbitmq", "dbos"}
    for r in rows:
        figures = result["systems"][r["system"]]
        assert int(r["completed"]) > 0, r
        assert int(r["errors"]) == 0, r
        assert float(r["cpu_s"]) > 0, r
        assert r["cpu_parts"], r  # e.g. "postgres 0.5; executor 0.2; ..."
        parts = {k: float(v) for k, v in (p.rsplit(" ", 1) for p in r["cpu_parts"].split("; "))}
        assert sum(parts.values()) == pytest.approx(float(r["cpu_ms_per_wf"]), abs=0.01)
        if r["system"] == "shardflow":  # (a part may use no clock tick in a short phase)
            assert set(parts) <= {"postgres", "executor", "router", "coordinator"}, r
        assert float(r["p50_ms"]) <= float(r["p99_ms"]) <= float(r["p999_ms"]), r
        if r["phase"] == "closed":
            assert figures["closed_wf_per_s"] == float(r["wf_per_s"])
            assert figures["closed_p99_ms"] == float(r["p99_ms"])
            assert figures["cpu_ms_per_wf"] == float(r["cpu_ms_per_wf"])
        else:
            assert figures["open_p99_ms"] == float(r["p99_ms"])
            assert figures["open_rate"] == 5.0
    sf = result["systems"]["shardflow"]["closed_wf_per_s"]
    for other in ("rabbitmq", "temporal", "dbos"):
        expected = round(sf / result["systems"][other]["closed_wf_per_s"], 2)
        assert result["ratios"][f"shardflow/{other}"] == expected
    text = (out / "report.md").read_text()
    for needed in (
        "### Where the CPU went",
        "| shardflow |",
        "| temporal |",
        "| rabbitmq |",
        "| dbos |",
        "sys_db_pool_size",
        "SQLite",
        "## Machine",
        "locust",
    ):
        assert needed in text
    for image in ("throughput.png", "latency.png"):
        assert is_png(out / image) and f"]({image})" in text


def test_compare_with_one_system_leaves_the_others_out(tmp_path: Path) -> None:
    """Also two rounds: every round's rows in the CSV, the medians in the JSON and report."""
    out = tmp_path / "results"
    result = run_module(
        "loadtests.compare",
        *("--systems", "rabbitmq", "--clients", "2", "--seconds", "1", "--open-rate", "5"),
        *("--warmup", "0", "--rounds", "2", "--out", str(out)),
    )
    assert set(result["systems"]) == {"rabbitmq"}
    assert result["ratios"] == {}
    assert result["rounds"] == 2 and result["ratios_per_round"] == {}
    rows = read_csv(out / "results.csv")
    assert [(r["round"], r["phase"]) for r in rows] == [
        ("1", "closed"),
        ("1", "open"),
        ("2", "closed"),
        ("2", "open"),
    ]
    closed = sorted(float(r["wf_per_s"]) for r in rows if r["phase"] == "closed")
    assert result["systems"]["rabbitmq"]["closed_wf_per_s"] == pytest.approx(sum(closed) / 2)
    text = (out / "report.md").read_text()
    assert "medians over 2 rounds" in text and "### Every round" in text


def _row(round_: int, system: str, phase: str, wf_per_s: float, p99: float) -> dict[str, Any]:
    return {
        "round": round_,
        "system": system,
        "phase": phase,
        "clients": 64 if phase == "closed" else "",
        "rate": 200.0 if phase == "open" else "",
        "seconds": 30.0,
        "completed": int(wf_per_s * 30),
        "errors": 1,
        "wf_per_s": wf_per_s,
        "p50_ms": p99 / 2,
        "p95_ms": p99 / 1.5,
        "p99_ms": p99,
        "p999_ms": p99 * 2,
        "cpu_s": wf_per_s * 0.03,
        "cpu_ms_per_wf": 1.0,
    }


def test_compare_rounds_give_medians_and_paired_ratios() -> None:
    rows = [
        _row(n, system, phase, wf, p99)
        for n, sf, rmq in ((1, 1500.0, 1000.0), (2, 1800.0, 800.0), (3, 1200.0, 900.0))
        for system, wf in (("shardflow", sf), ("rabbitmq", rmq))
        for phase, p99 in (("closed", wf / 100), ("open", 10.0 + n))
    ]
    args = compare.parse(["--systems", "shardflow,rabbitmq", "--rounds", "3"])
    result = compare.summary_json(rows, args)
    sf, rmq = result["systems"]["shardflow"], result["systems"]["rabbitmq"]
    assert (sf["closed_wf_per_s"], rmq["closed_wf_per_s"]) == (1500.0, 900.0)
    assert (sf["closed_p99_ms"], sf["open_p99_ms"], sf["open_rate"]) == (15.0, 12.0, 200.0)
    assert sf["errors"] == 6  # summed over the rounds and phases, not a median
    assert result["ratios"] == {"shardflow/rabbitmq": round(1500 / 900, 2)}
    assert result["rounds"] == 3
    assert result["ratios_per_round"] == {"shardflow/rabbitmq": [1.5, 2.25, 1.33]}
    # The median of an even count is a mean: rounded like the figures, no 54.480000000000004.
    two = [
        dict(rows[0], round=n, p95_ms=p95, system="x", phase="closed")
        for n, p95 in enumerate((53.33, 55.63))
    ]
    assert compare.medians(two)[0]["p95_ms"] == 54.48
    # One round: the rows are the figures, and the JSON is as it always was.
    one = compare.summary_json([r for r in rows if r["round"] == 1], args)
    assert one["systems"]["shardflow"]["closed_wf_per_s"] == 1500.0
    assert "rounds" not in one and "ratios_per_round" not in one


def test_a_phase_with_no_completed_workflow_has_no_latency() -> None:
    """A system that finished nothing (Temporal's open loop above its speed) shows no
    latency, not 0 ms, in the rows, the JSON and the report."""
    args = compare.parse(["--systems", "temporal"])
    summary = {"completed": 0, "errors": 5, "seconds": 1.0, "wf_per_s": 0.0}
    summary.update({p: 0.0 for p in ("p50_ms", "p95_ms", "p99_ms", "p999_ms")})
    r = compare.row("temporal", "open", Phase(summary, 0.5, {"temporal": 0.5}), args)
    assert (r["p50_ms"], r["p99_ms"], r["cpu_ms_per_wf"]) == (None, None, None)
    assert compare.summary_json([r], args)["systems"]["temporal"]["open_p99_ms"] is None
    assert "| temporal | open (200/s) | 0.0 | - | - | - | - | 5 | - |" in report.table([r])


@pytest.mark.parametrize(
    "argv",
    [
        ["--systems", "shardflow,kafka"],
        ["--systems", ""],
        ["--clients", "0"],
        ["--open-rate", "-1"],
        ["--rounds", "0"],
    ],
)
def test_compare_refuses_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        compare.parse(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--shards", "2,1"],
        ["--shards", "one"],
        ["--shards", "0,1"],
        ["--cpu-per-shard", "0"],
        ["--shards", "2,4"],  # auto clients measure the one-shard baseline
        ["--clients-per-shard", "many"],
        ["--clients-per-shard", "0"],
    ],
)
def test_scale_refuses_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        scale.parse(argv)
    assert exc.value.code == 2


def test_a_cpu_cap_must_be_positive() -> None:
    with pytest.raises(CgroupError):
        CpuGroup.create("shardflow-test-nothing", 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroup quotas need root")
def test_a_process_that_exited_before_it_was_moved_is_passed_over() -> None:
    """A shard's process list is read, then moved one by one: one that exits between the
    two (a Postgres backend closing) must not fail the run (seen once in CI)."""
    group = CpuGroup.create(f"shardflow-test-gone-{os.getpid()}", 0.5)
    try:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        group.add(gone.pid)
        alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            group.add(alive.pid)
            procs = (group.dirs[0] / "cgroup.procs").read_text().split()
            assert str(alive.pid) in procs and str(gone.pid) not in procs
        finally:
            alive.kill()
            alive.wait()
    finally:
        group.remove()


async def test_locust_scenarios_report_start_to_result_and_batches() -> None:
    async with local_cluster(shards=2) as cluster:
        url = cluster.router_urls[0]
        waited = await run_locust(url, "ShardflowUser", users=4, seconds=3)
        batched = await run_locust(url, "ShardflowBatchUser", users=2, seconds=2)
    flow = waited["WORKFLOW start_to_result"]
    assert flow["requests"] > 0 and flow["failures"] == 0
    assert waited["POST start"]["requests"] >= flow["requests"]
    assert waited["GET result"]["failures"] == 0
    assert batched["POST batch"]["requests"] > 0 and batched["POST batch"]["failures"] == 0


@pytest.mark.timeout(600)
def test_locust_drives_shardflow_and_both_baselines(tmp_path: Path) -> None:
    """locust_run --systems: each system started as compare starts it, driven by its own
    user class; locust's CSV and HTML kept per system, the workflows' figures in the JSON."""
    out = tmp_path / "locust"
    result = run_module(
        "loadtests.locust_run",
        *("--systems", "shardflow,temporal,rabbitmq", "--users", "2", "--seconds", "2"),
        *("--out", str(out)),
    )
    assert set(result["systems"]) == {"shardflow", "temporal", "rabbitmq"}
    for name, user in (
        ("shardflow", "Shardflow"),
        ("temporal", "Temporal"),
        ("rabbitmq", "Rabbit"),
    ):
        figures = result["systems"][name]
        assert figures["requests"] > 0 and figures["failures"] == 0, (name, figures)
        assert (out / name / f"{user}User_stats.csv").exists()
        assert "<html" in (out / name / f"{user}User.html").read_text()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("routers", ["one", "per-shard", "per-shard-home"])
def test_scale_model_caps_each_shard_and_reports_efficiency(tmp_path: Path, routers: str) -> None:
    """One router outside the caps (executor processes inside), or a router per shard
    inside its cap running that shard's workflows, spread over by the load generator."""
    if os.geteuid() != 0:
        pytest.fail("the scale model writes cgroup quotas: run the suite as root (CI does)")
    out = tmp_path / "scale"
    result = run_module(
        "loadtests.scale",
        *("--shards", "1,2", "--cpu-per-shard", "0.3", "--clients-per-shard", "4"),
        *("--seconds", "2", "--warmup", "0.5", "--out", str(out), "--routers", routers),
    )
    assert result["routers"] == routers
    steps = result["steps"]
    assert [s["shards"] for s in steps] == [1, 2]
    assert result["efficiency"]["1"] == 1.0
    per_shard = steps[0]["wf_per_s"]
    assert result["efficiency"]["2"] == round(steps[1]["wf_per_s"] / (2 * per_shard), 3)
    for s in steps:
        assert s["wf_per_s"] > 0 and s["errors"] == 0
        assert s["capped_cores"] > 0  # the shards' processes ran inside their groups
        assert s["cap_cores"] == round(0.3 * s["shards"], 3)
    rows = read_csv(out / "scale.csv")
    assert [int(r["shards"]) for r in rows] == [1, 2]
    assert is_png(out / "scale.png")
    assert not leftover_groups()  # cleaned up


def test_the_load_generator_sends_each_workflow_to_its_shard_s_home_router() -> None:
    """``SHARD=URL`` entries: workflow ``i`` goes to router ``i`` (in turn) with an ID whose
    slot that router's shard owns; plain URLs only take turns."""
    homed = HttpDriver("s0=http://a:1,s1=http://b:2/")
    assert homed.urls == ["http://a:1", "http://b:2"] and homed.homes == ["s0", "s1"]
    homed.owners = ["s0", "s1", "s1", "s0", "s1", "s0", "s0", "s1"]
    for i in range(20):
        wid = homed._id(i)
        assert homed.owners[slot_of(wid, 8)] == ["s0", "s1"][i % 2]
    plain = HttpDriver("http://a:1,http://b:2")
    assert plain.homes == [] and plain.urls == ["http://a:1", "http://b:2"]


def leftover_groups(prefix: str = "shardflow-scale-") -> list[Path]:
    """Groups of a benchmark still present where it makes them (v2 root, v1 cpu/cpuacct)."""
    root = Path("/sys/fs/cgroup")
    places = [root, root / "cpu", root / "cpuacct", root / "cpu,cpuacct"]
    return [
        p
        for place in places
        if place.is_dir() and not place.is_symlink()
        for p in place.iterdir()
        if p.name.startswith(prefix)
    ]


def test_bench_http_prints_its_figures() -> None:
    out = run_module("loadtests.bench", "http", "--seconds", "1", "--clients", "4", "--rate", "20")
    assert out["workload"] == "W3" and out["shards"] == 3 and out["errors"] == 0
    assert out["closed_wf_per_s"] > 0 and out["open_rate"] == 20
    assert out["closed_p99_ms"] >= out["closed_p50_ms"] > 0
    assert out["open_p99_ms"] >= out["open_p50_ms"] > 0 and out["cpu_ms_per_wf"] > 0
    for phase in ("", "open_"):
        parts = out[f"{phase}cpu_ms_per_wf_by_part"]
        assert {"postgres", "router"} <= set(parts)  # the executors run in the router
        assert all(v >= 0 for v in parts.values())  # parts each rounded to 0.001
        assert sum(parts.values()) == pytest.approx(out[f"{phase}cpu_ms_per_wf"], abs=0.01)


def test_bench_statements_prints_each_statement_against_the_floor() -> None:
    """Every statement ran and checked its own answer (a start that handed nothing off,
    or a flush that wrote nothing, fails the benchmark), and each figure is per call,
    per row and against the floor of the same rounds."""
    out = run_module("loadtests.bench", "statements", "--calls", "14", "--rounds", "2")
    assert out["rounds"] == 2 and out["calls"] == 14
    figures = out["statements"]
    assert list(figures) == [
        "floor", "start_1", "start_5", "own_1", "own_3", "flush_1", "flush_7", "finish_7",
        "claim_idle",
    ]  # fmt: skip
    for name, rows in (("start_5", 5), ("own_3", 3), ("flush_7", 7), ("start_1", 1)):
        f = figures[name]
        assert f["us_per_call"] > 0
        assert f["us_per_row"] == pytest.approx(f["us_per_call"] / rows, abs=0.1)
        floor = figures["floor"]["us_per_call"]
        slack = rounding_slack(f["us_per_call"], floor, 0.1, 0.1, 0.01)
        assert f["ratio_to_floor"] == pytest.approx(f["us_per_call"] / floor, abs=slack)
    assert figures["floor"]["ratio_to_floor"] == 1.0
    assert "against" not in out and "ratio_to_against" not in out


def test_bench_statements_against_another_checkout_takes_turns_with_it() -> None:
    """--against runs another checkout's SQL in a database of its own (here: this one's),
    every statement of both, with paired ratios."""
    out = run_module(
        "loadtests.bench", "statements", "--calls", "14", "--rounds", "2",
        "--against", str(ROOT),
    )  # fmt: skip
    assert set(out["against"]) == set(out["statements"]) == set(out["ratio_to_against"])
    assert all(f["us_per_call"] > 0 for f in out["against"].values())
    assert all(r > 0 for r in out["ratio_to_against"].values())


def _checkout(root: Path, functions: str, drop_query: str = "") -> str:
    """A stand-in checkout: this one's named queries (less one) and the given functions."""
    sql = root / "shard" / "sql"
    sql.mkdir(parents=True)
    queries = (ROOT / "shard" / "sql" / "queries.sql").read_text()
    if drop_query:
        queries = queries.replace(f"-- name: {drop_query}\n", "-- name: renamed_away\n")
    (sql / "queries.sql").write_text(queries)
    (sql / "functions.sql").write_text(functions)
    return str(root)


@pytest.mark.parametrize(
    "make_argv",
    [
        lambda _: ["--calls", "3"],
        lambda _: ["--rounds", "0"],
        lambda _: ["--against", "/nonexistent/checkout"],
        lambda tmp: ["--against", _checkout(tmp, "", drop_query="workflow_start_many")],
        lambda tmp: ["--against", _checkout(tmp, "SELECT no_such_function();"), "--calls", "7"],
    ],
    ids=["few-calls", "no-rounds", "no-checkout", "query-missing", "functions-fail"],
)
def test_bench_statements_refuses_bad_arguments(
    make_argv: Callable[[Path], list[str]], tmp_path: Path
) -> None:
    assert "bench_failed" in run_refused("loadtests.bench", "statements", *make_argv(tmp_path))


def test_processes_are_told_apart_by_their_command_line() -> None:
    assert part_of(["postgres: postgres shardflow [local] idle"]) == "postgres"
    assert part_of(["/usr/lib/postgresql/15/bin/postgres", "-D", "/tmp/x"]) == "postgres"
    assert part_of(["postgres: walwriter   "]) == "postgres"
    python = "/work/.venv/bin/python3"
    assert part_of([python, "-m", "shardflow", "executor", "--dsn", "x"]) == "executor"
    assert part_of([python, "-m", "shardflow", "router", "--catalog", "x"]) == "router"
    assert part_of([python, "-m", "shardflow", "dev"]) == "shardflow"
    assert part_of([python, "-m", "loadtests.rabbit_w3", "--url", "x"]) == "loadtests.rabbit_w3"
    assert part_of(["/usr/lib/erlang/erts-13/bin/beam.smp", "-W", "w"]) == "beam.smp"
    assert part_of([]) == "?"


def test_cpu_by_part_counts_a_busy_child_under_its_program_name() -> None:
    program = os.path.basename(sys.executable)  # a program run without -m
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        before = tree_cpu_parts([os.getpid()])
        spent: dict[str, float] = {}
        for _ in range(1000):  # until the child's CPU passes a clock tick (10 ms)
            spent = parts_spent(before, tree_cpu_parts([os.getpid()]))
            if spent.get(program, 0.0) > 0:
                break
        assert spent[program] > 0
        excluded = tree_cpu_parts([os.getpid()], exclude=[child.pid])
        assert excluded.get(program, 0.0) < tree_cpu_parts([os.getpid()])[program]
    finally:
        child.kill()
        child.wait()


_REAPER = """
import subprocess, sys, time
burn = "import time\\nx = 0\\nwhile time.process_time() < 0.3: x += 1\\nprint(time.process_time())"
out = subprocess.run([sys.executable, "-c", burn], capture_output=True, text=True).stdout
print(out.strip(), flush=True)
time.sleep(60)
"""


def test_cpu_of_a_child_that_exited_and_was_reaped_still_counts() -> None:
    """As a postmaster's autovacuum workers do: the grandchild's CPU is counted once its
    parent (in the tree) has waited for it, under the parent's part."""
    program = os.path.basename(sys.executable)
    before = tree_cpu_parts([os.getpid()])
    with subprocess.Popen(
        [sys.executable, "-c", _REAPER], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            grandchild_cpu = float(child.stdout.readline())  # it has exited and been reaped
            spent = parts_spent(before, tree_cpu_parts([os.getpid()]))
            assert spent[program] >= grandchild_cpu - 0.02  # one clock tick of rounding
        finally:
            child.kill()


@pytest.mark.parametrize("cpu_per_shard", [0.0, 0.5])
def test_bench_rebalance_moves_a_third_of_the_slots_losing_nothing(cpu_per_shard: float) -> None:
    if cpu_per_shard and os.geteuid() != 0:
        pytest.fail("--cpu-per-shard writes cgroup quotas: run the suite as root (CI does)")
    out = run_module(
        *("loadtests.bench", "rebalance", "--seconds", "1", "--clients", "4", "--slots", "24"),
        *("--cpu-per-shard", str(cpu_per_shard)),
    )
    assert out["cpu_per_shard"] == cpu_per_shard
    # capped: each shard's processes (the third one's too) ran inside its own group
    used = out["capped_cpu_s"]
    assert sorted(used) == (["shard0", "shard1", "shard2"] if cpu_per_shard else [])
    assert all(seconds > 0 for seconds in used.values())
    assert not leftover_groups("shardflow-bench-")
    assert out["slots_moved"] == 8
    assert out["lost"] == 0 and out["duplicated"] == 0 and out["errors"] == 0
    assert out["steady_wf_per_s"] > 0 and out["during_move_wf_per_s"] > 0
    during, steady = out["during_move_wf_per_s"], out["steady_wf_per_s"]
    slack = rounding_slack(during, steady, 0.1, 0, 0.001)
    assert out["ratio"] == pytest.approx(during / steady, abs=slack)
    # the move window lies inside the load phase (which SIGTERM ended once it was over)
    assert out["phase_wf_per_s"] > 0 and 0 < out["move_seconds"] < 240
    assert out["pause_p99_ms"] >= out["pause_p50_ms"] > 0
    assert len(out["during_per_second"]) >= 1 and sum(out["during_per_second"]) > 0
    assert sorted(out["cpu_ms_per_wf"]) == ["after", "during", "steady"]
    assert all(ms > 0 for ms in out["cpu_ms_per_wf"].values())


def test_rate_between_cuts_a_window_out_of_a_timeline() -> None:
    summary = {"started_unix": 100.0, "per_tenth": [10] * 10 + [0] * 10}
    assert rate_between(summary, 100.0, 101.0) == pytest.approx(100.0)
    assert rate_between(summary, 100.5, 101.5) == pytest.approx(50.0)
    assert rate_between(summary, 100.05, 100.15) == pytest.approx(100.0)  # pro rata
    assert rate_between(summary, 103.0, 104.0) == 0.0
    assert rate_between(summary, 101.0, 101.0) == 0.0


@pytest.mark.parametrize("value", ["-0.5", "nan", "lots"])
def test_bench_rebalance_refuses_a_bad_cpu_cap(value: str) -> None:
    assert "--cpu-per-shard" in run_refused(
        "loadtests.bench", "rebalance", "--cpu-per-shard", value
    )


async def test_bench_engine_s_loader_keeps_its_workflows_in_flight_whatever_takes_them(
    client: ShardClient,
) -> None:
    """Starts handed off to an executor never enter the ready queue: the loader counts
    them too, and stops at its bound (it used to count the queue only, and never stopped)."""
    await ShardStore(client.pool).registry_add([("w3", "1", 30.0)])
    async with client.pool.acquire() as conn:
        await conn.execute(OPEN_STAND_IN)
    started = await bench._load(client, 1.0, 100, batch=32)
    async with client.pool.acquire() as conn:
        running = await conn.fetchval(
            "SELECT count(*) FROM shardflow.workflows WHERE status = 'running'"
        )
    assert started == running and 100 - 32 // 4 < started <= 100


def test_bench_engine_measures_its_ceiling_first_with_its_cpu() -> None:
    out = run_module("loadtests.bench", "engine", "--seconds", "1", "--in-flight", "64")
    assert set(out) >= {
        "workload", "wf_per_s", "p50_ms", "p99_ms", "ceiling_wf_per_s", "ratio_to_ceiling",
        "ceiling_cpu_ms_per_wf",
    }  # fmt: skip
    assert out["ceiling_wf_per_s"] > 0 and out["ceiling_cpu_ms_per_wf"] > 0
    wf, ceiling = out["wf_per_s"], out["ceiling_wf_per_s"]
    slack = rounding_slack(wf, ceiling, 0.1, 0.1, 0.001)
    assert out["ratio_to_ceiling"] == pytest.approx(wf / ceiling, abs=slack)
