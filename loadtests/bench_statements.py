"""`shardflow bench statements`: the Postgres CPU of each hot statement, against a floor.

One local durable Postgres with a migrated shard, its slots owned as on a shard of three,
and a stand-in executor row that takes hand-offs (as a running executor's does). Each
round runs every hot statement ``--calls`` times on one connection and reads the CPU
its backend used (``/proc/<pid>/schedstat``, nanoseconds): starts alone and in
batches (handed off by NOTIFY; ``own_*``: the fast path's, to the caller's own executor, in
the answer), checkpoint flushes of steps and of finishes, an idle claim. The baseline is
the floor of a durable write, measured in the same rounds: a one-row autocommit INSERT.

The flushes write what the starts created (leased to the stand-in), so every statement
does its real work; each checks its answer, and a statement that wrote nothing stops the
benchmark. Whole-path figures move with the machine by a tenth or more within minutes;
these are per statement and steadier, for telling whether a change to the SQL helped.
Nothing listens on the shard, so NOTIFYs wake nobody here.

With ``--against CHECKOUT``, that checkout's functions and named queries run too, in a
database of their own on the same server, over this checkout's schema; the two take
turns every round (the order reversed every other round) and the paired ratios are
printed. A run of the same SQL on both sides puts them within about 0.87-1.16 at 4
rounds: a change must beat that, or take more rounds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from examples.bench import make_input
from loadtests.bench_cluster import local_shard
from loadtests.cpu import process_cpu_ns
from shardflow.devcluster.launcher import ensure_database
from shardflow.devcluster.local_shard import LocalShard
from shardflow.infra import pool as shard_pool
from shardflow.infra.errors import ShardflowError
from shardflow.infra.sqlfiles import parse
from shardflow.shard.migrate import migrate
from shardflow.shard.model import StepRow, WorkflowRecord
from shardflow.shard.queries import load, query
from shardflow.shard.slots import slot_of
from shardflow.shard.store import flush_payload

SLOTS, OWNED = 1024, 341  # a shard of three
OWNER, LOCK_KEY = "bench-stand-in", 4242
INPUT = json.dumps(make_input(1))
FLOOR = "INSERT INTO bench_floor (id) VALUES ($1)"


class BenchError(ShardflowError):
    code = "bench_failed"


def add_parser(which: Any) -> None:
    s = which.add_parser("statements", help="Postgres CPU of each hot statement vs a floor")
    s.add_argument("--calls", type=int, default=700, help="calls of each statement per round")
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument(
        "--against",
        metavar="CHECKOUT",
        help="also run another checkout's shard/sql (functions and named queries, over this "
        "checkout's schema) in a database of its own, taking turns: the same-run baseline "
        "for a change to the SQL (e.g. a `git worktree` of the commit before)",
    )
    s.set_defaults(handler=run)


async def _setup(conn: asyncpg.Connection) -> None:
    await conn.execute(query("registry_add"), ["w3"], ["1"], [None])
    await conn.execute(
        "INSERT INTO shardflow.settings (key, value) VALUES ('slots', $1)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        str(SLOTS),
    )
    await conn.execute(
        "INSERT INTO shardflow.slots (slot, epoch) SELECT g, 1 FROM generate_series(0, $1) g",
        OWNED - 1,
    )
    await conn.execute(
        query("executor_register"), OWNER, LOCK_KEY, 86400.0, "bench", 0, "bench@server"
    )
    await conn.execute(query("executor_handoff"), OWNER, ["w3@1"], 86400.0, 1_000_000)
    await conn.execute("CREATE TABLE bench_floor (id text PRIMARY KEY)")


def _ids(prefix: str, n: int) -> list[str]:
    """``n`` workflow IDs whose slots this shard owns (a third of all IDs land there)."""
    ids = (f"{prefix}{g}" for g in itertools.count(1))
    return list(itertools.islice((i for i in ids if slot_of(i, SLOTS) < OWNED), n))


def _record(wid: str, seq: int, finish: bool) -> WorkflowRecord:
    """A checkpoint record of one step; with ``finish``, the workflow completes with it."""
    step = StepRow(seq, f"step{seq}", "completed", '{"ok": 1}', None, 1, datetime.now(UTC))
    return WorkflowRecord(
        wid,
        1,
        status="completed" if finish else "running",
        output='{"done": true}' if finish else None,
        next_seq=seq + 1,
        seen_signal=0,
        steps=[step],
    )


# A statement's calls: (call number) -> one execution that checks its own answer.
Call = Callable[[int], Awaitable[None]]
# A round's figures: microseconds of backend CPU per call, by statement.
Figures = dict[str, float]


async def _measure(pid: int, calls: int, call: Call) -> float:
    """Microseconds of backend CPU per call."""
    before = process_cpu_ns(pid)
    for i in range(calls):
        await call(i)
    return (process_cpu_ns(pid) - before) / calls / 1000


def _check(rows: list[asyncpg.Record], expected: int, what: str, ok: str = "") -> None:
    if len(rows) != expected or (ok and not all(r[ok] for r in rows)):
        raise BenchError(f"{what}: {len(rows)} rows answered of {expected}, or not all {ok}")


async def _round(conn: asyncpg.Connection, q: dict[str, str], n: int, calls: int) -> Figures:
    """Every statement ``calls`` times (texts from ``q``); microseconds of backend CPU per
    call of each."""
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    singles = _ids(f"r{n}a-", calls)
    batched = _ids(f"r{n}b-", calls * 5)
    own = _ids(f"r{n}c-", calls * 4)
    groups = [batched[i : i + 7] for i in range(0, len(batched) - 6, 7)]

    async def start_ids(ids: list[str], own: bool = False) -> None:
        """Starts handed off to the stand-in: by NOTIFY, or (``own``) as the fast path's
        starts by the stand-in's own process, in the answer."""
        k = len(ids)
        start = q["workflow_start_many"]
        # a checkout before traceparents takes 8 parameters, one before the fast path 9
        extra: list[Any] = [None] * sum(f"${n}" in start for n in (9, 10))
        named = own and len(extra) == 2  # the stand-in named as the caller's own
        if named:
            extra[1] = OWNER
        rows = await conn.fetch(start, ids, ["w3"] * k, [INPUT] * k,
                                [None] * k, [None] * k, [None] * k, None, False,
                                *extra)  # fmt: skip
        if not all(r["created"] and r["status"] == "running" for r in rows):
            raise BenchError("a start did not create a workflow handed off to the stand-in")
        if named and not all(r["handoff"] for r in rows):
            raise BenchError("a start of the stand-in's own did not answer with its hand-off")

    async def flush(ids: list[str], seq: int, finish: bool) -> None:
        lean = "checkpoint_flush_one" if len(ids) == 1 else "checkpoint_flush_plain"
        payload = flush_payload([_record(wid, seq, finish) for wid in ids])
        _check(await conn.fetch(q[lean], payload), len(ids), lean, "id")

    async def floor(i: int) -> None:
        await conn.execute(FLOOR, f"r{n}-{i}")

    async def claim(_: int) -> None:
        rows = await conn.fetch(q["workflow_claim_batch"], OWNER, 16, 30.0, None, None)
        _check(rows, 0, "an idle claim")

    figures = {
        "floor": await _measure(pid, calls, floor),
        "start_1": await _measure(pid, calls, lambda i: start_ids(singles[i : i + 1])),
        "start_5": await _measure(pid, calls, lambda i: start_ids(batched[5 * i : 5 * i + 5])),
        "own_1": await _measure(pid, calls, lambda i: start_ids(own[i : i + 1], own=True)),
        "own_3": await _measure(
            pid, calls, lambda i: start_ids(own[calls + 3 * i : calls + 3 * i + 3], own=True)
        ),
        "flush_1": await _measure(pid, calls, lambda i: flush(singles[i : i + 1], 0, False)),
        "flush_7": await _measure(pid, len(groups), lambda i: flush(groups[i], 0, False)),
        "finish_7": await _measure(pid, len(groups), lambda i: flush(groups[i], 1, True)),
        "claim_idle": await _measure(pid, calls, claim),
    }
    # The next round starts from the same table sizes.
    await conn.execute("DELETE FROM shardflow.workflows; DELETE FROM shardflow.steps;"
                       " DELETE FROM bench_floor")  # fmt: skip
    await conn.execute("VACUUM shardflow.workflows, shardflow.steps, bench_floor")
    return figures


# The named queries a round runs (the other checkout's, with --against).
NEEDED = {"workflow_start_many", "checkpoint_flush_one", "checkpoint_flush_plain",
          "workflow_claim_batch"}  # fmt: skip

# Workflows (or records) per call of each statement, for the per-workflow figure.
PER_CALL = {"floor": 1, "start_1": 1, "start_5": 5, "own_1": 1, "own_3": 3, "flush_1": 1,
            "flush_7": 7, "finish_7": 7, "claim_idle": 1}  # fmt: skip


@dataclass
class Variant:
    """The SQL a database runs: this checkout's, or another's functions and named queries
    over this checkout's schema (``--against``)."""

    label: str
    queries: dict[str, str]
    functions: str | None = None  # applied after the migrations; None: this checkout's
    rounds: list[Figures] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(r[name] for r in self.rounds)


def _functions_of(sql: Path) -> str:
    """Another checkout's SQL API: sql/functions/*.sql in order (sql/functions.sql before
    they were split by concept)."""
    split = sorted((sql / "functions").glob("*.sql"))
    if not split:
        return (sql / "functions.sql").read_text(encoding="utf-8")
    return "\n".join(p.read_text(encoding="utf-8") for p in split)


def _variants(against: str | None) -> list[Variant]:
    here = Variant("this", load())
    if against is None:
        return [here]
    sql = Path(against) / "shard" / "sql"
    try:
        other = Variant(
            "against",
            parse((sql / "queries.sql").read_text(encoding="utf-8")),
            _functions_of(sql),
        )
    except (OSError, ValueError) as exc:
        raise BenchError(f"--against {against}: no readable shard/sql there ({exc})") from None
    missing = sorted(NEEDED - set(other.queries))
    if missing:
        raise BenchError(f"--against {against}: its queries.sql lacks {', '.join(missing)}")
    return [here, other]


async def _database(shard: LocalShard, variant: Variant) -> asyncpg.Connection:
    """A connection to the variant's own database, set up."""
    assert shard.server is not None
    name = shard.database if variant.functions is None else f"bench_{variant.label}"
    await ensure_database(shard.server, name)
    conn = await shard_pool.connect(shard.server.dsn(name))
    try:
        await migrate(conn)
        if variant.functions is not None:
            await conn.execute(variant.functions)
        await _setup(conn)
    except asyncpg.PostgresError as exc:
        await conn.close()
        raise BenchError(f"{variant.label}: its SQL does not apply here: {exc}") from None
    return conn


async def _checked_round(conn: asyncpg.Connection, v: Variant, n: int, calls: int) -> Figures:
    try:
        return await _round(conn, v.queries, n, calls)
    except asyncpg.PostgresError as exc:
        raise BenchError(f"{v.label}: a statement failed: {exc}") from None


def _report(variants: list[Variant], calls: int) -> dict[str, Any]:
    result: dict[str, Any] = {"rounds": len(variants[0].rounds), "calls": calls}
    for v in variants:
        floor = v.median("floor")
        figures = {}
        print(f"{v.label}: {'statement':<11} {'us/call':>8} {'us/row':>7} {'x floor':>8}")
        for name, per in PER_CALL.items():
            us = v.median(name)
            ratio = us / floor if floor else 0.0
            figures[name] = {
                "us_per_call": round(us, 1),
                "us_per_row": round(us / per, 1),
                "ratio_to_floor": round(ratio, 2),
            }
            print(f"{v.label}: {name:<11} {us:8.0f} {us / per:7.0f} {ratio:8.2f}")
        result["statements" if v.functions is None else "against"] = figures
    if len(variants) == 2:
        here, other = variants
        # Each round ran both variants back to back: the ratio of a round is paired.
        ratios = {
            name: round(statistics.median(a[name] / b[name] for a, b in zip(
                here.rounds, other.rounds, strict=True)), 3)
            for name in PER_CALL
        }  # fmt: skip
        print("this / against (median of the rounds' ratios): "
              + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))  # fmt: skip
        result["ratio_to_against"] = ratios
    return result


async def run(args: argparse.Namespace) -> int:
    if args.calls < 7 or args.rounds < 1:
        raise BenchError("--calls must be at least 7 and --rounds at least 1")
    variants = _variants(args.against)
    conns: list[asyncpg.Connection] = []
    async with local_shard(apps=[]) as shard:
        try:
            for v in variants:
                conns.append(await _database(shard, v))
                await _checked_round(conns[-1], v, 0, min(args.calls, 50))  # warm-up
            for n in range(1, args.rounds + 1):
                # Taking turns, the order reversed every other round.
                pairs = list(zip(variants, conns, strict=True))
                for v, conn in pairs if n % 2 else pairs[::-1]:
                    v.rounds.append(await _checked_round(conn, v, n, args.calls))
                    print(f"round {n} {v.label}: "
                          + ", ".join(f"{k} {x:.0f}" for k, x in v.rounds[-1].items())
                          + " us/call", flush=True)  # fmt: skip
        finally:
            for conn in conns:
                await conn.close()
    print(json.dumps(_report(variants, args.calls)))
    return 0
