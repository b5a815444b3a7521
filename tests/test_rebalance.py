"""Online rebalancing: a cluster grows from 2 to 3 shards under load, losing and
repeating nothing; moves resume after the coordinator dies at each phase."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import IO, Any

import pytest

from shardflow.catalog import admin as operations
from shardflow.catalog.store import CatalogError
from shardflow.coordinator.leader import Coordinator, CoordinatorSettings
from shardflow.coordinator.moves import Mover
from shardflow.devcluster.launcher import PostgresServer
from shardflow.infra.errors import WorkflowFailedError
from shardflow.router.client import Client
from shardflow.shard.client import ShardClient
from shardflow.shard.faults import Faults
from tests.background import RUNNING
from tests.cluster_fixtures import SHARDS, SLOTS, LiveCluster
from tests.conftest import ROOT, create_database
from tests.waiting import until

TERM = 1  # the leader's term that move calls carry


async def _start_load(client: Client, n: int, prefix: str) -> list[str]:
    docs = await client.start_many(
        [{"workflow": "crashy", "input": {"n": i}, "id": f"{prefix}-{i}"} for i in range(n)]
    )
    assert all("error" not in d for d in docs), docs[:3]
    return [d["id"] for d in docs]


async def _check_cluster(cluster: LiveCluster, crashy: list[str]) -> None:
    """Nothing lost, nothing doubled, every slot owned once at the catalog's epoch."""
    where: dict[str, list[str]] = {}
    app_rows: dict[str, int] = {}
    owned: dict[int, list[tuple[str, int]]] = {}
    for shard_id in SHARDS:
        for row in await cluster.fetch_on(shard_id, "SELECT id, status FROM shardflow.workflows"):
            where.setdefault(row["id"], []).append(shard_id)
            assert row["status"] == "completed", (row["id"], row["status"])
        for row in await cluster.fetch_on(
            shard_id, "SELECT workflow_id, count(*) AS n FROM app_rows GROUP BY 1"
        ):
            app_rows[row["workflow_id"]] = app_rows.get(row["workflow_id"], 0) + row["n"]
        steps = await cluster.fetch_on(
            shard_id,
            "SELECT workflow_id, array_agg(name ORDER BY seq) AS names "
            "FROM shardflow.steps GROUP BY 1",
        )
        for row in steps:
            if row["workflow_id"] in crashy:
                assert row["names"] == ["plain", "insert_app_row", "plain"], row
        for row in await cluster.fetch_on(
            shard_id, "SELECT slot, epoch FROM shardflow.slots WHERE state = 'owned'"
        ):
            owned.setdefault(row["slot"], []).append((shard_id, row["epoch"]))
    assert all(len(s) == 1 for s in where.values()), "a workflow is on two shards"
    assert set(crashy) <= set(where)
    assert {w: app_rows.get(w) for w in crashy} == dict.fromkeys(crashy, 1)
    catalog = await cluster.catalog.pool.fetch("SELECT slot, shard_id, epoch FROM catalog.slots")
    assert len(catalog) == SLOTS
    for row in catalog:
        assert owned.get(row["slot"]) == [(row["shard_id"], row["epoch"])], row["slot"]


async def _run_coordinator(
    cluster: LiveCluster, stop: asyncio.Event, faults: Faults | None = None
) -> Coordinator:
    settings = CoordinatorSettings.load(
        {
            "catalog": cluster.catalog_dsn,
            "poll_interval": "0.1",
            "move_interval": "0.05",
            "rollback_after": "1",
        },
        env={},
    )
    coordinator = Coordinator(settings, faults)
    RUNNING.append((stop, asyncio.get_running_loop().create_task(coordinator.run(stop))))
    await asyncio.wait_for(coordinator.leader_event.wait(), 30)
    return coordinator


async def _moves_done(cluster: LiveCluster) -> bool:
    return not (await operations.status(cluster.catalog))["moves"]


async def test_grow_from_two_to_three_shards_under_load(growing: LiveCluster):
    client = await growing.add_router()
    first = await _start_load(client, 300, "before")
    waiters = [(await client.start("waiter", None))["id"] for _ in range(10)]
    nappers = [(await client.start("napper", {"seconds": 1.5}))["id"] for _ in range(10)]
    await growing.catalog.add_shard("c2", growing.shard_dsns["c2"])
    await growing.start_executor("c2", app="tests.apps.crash")
    stop = asyncio.Event()
    await _run_coordinator(growing, stop)
    planned = await operations.rebalance(growing.catalog)
    assert planned == SLOTS // 3  # 64 slots: 21 move to the new shard
    during = asyncio.create_task(_start_load(client, 300, "during"))
    await until(lambda: _moves_done(growing), timeout=120, what="the moves")
    more = await during
    for wid in waiters:
        assert await client.send_event(wid, "go", {"ok": wid})
    ids = first + more
    results = await asyncio.gather(*(client.result(w, timeout=120) for w in ids))
    assert all(r["rows"] == 1 for r in results)
    for wid in waiters:
        assert await client.result(wid, timeout=60) == {"ok": wid}
    for wid in nappers:
        assert await client.result(wid, timeout=60) == "rested"
    stop.set()
    status = await operations.status(growing.catalog)
    assert sorted(s["slots"] for s in status["shards"]) == [21, 21, 22]
    await _check_cluster(growing, ids)
    moved = await growing.catalog.pool.fetch("SELECT pause_ms FROM catalog.moves")
    assert len(moved) == planned and all(m["pause_ms"] is not None for m in moved)


def _spawn_coordinator(
    cluster: LiveCluster, fault: str | None, name: str = "", log: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SHARDFLOW_FAULTS", None)
    if fault:
        env["SHARDFLOW_FAULTS"] = fault
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shardflow",
            "coordinator",
            "--catalog",
            cluster.catalog_dsn,
            "--poll-interval",
            "0.1",
            "--move-interval",
            "0.05",
            "--name",
            name,
            "--leader-lease",
            "1",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if log is None else log,
    )


@pytest.mark.parametrize("phase", ["precopied", "fenced", "copied", "flipped"])
async def test_moves_resume_after_the_coordinator_dies_at_each_phase(
    growing: LiveCluster, phase: str
):
    client = await growing.add_router()
    ids = await _start_load(client, 60, "wf")
    await growing.catalog.add_shard("c2", growing.shard_dsns["c2"])
    await growing.start_executor("c2", app="tests.apps.crash")
    await operations.rebalance(growing.catalog)
    victim = _spawn_coordinator(growing, f"move_{phase}=kill@2", "victim")
    await until(
        lambda: growing.catalog.pool.fetchval("SELECT owner = 'victim' FROM catalog.leader"),
        what="the victim to lead",
    )
    standby = _spawn_coordinator(growing, None, "standby")
    try:
        await until(
            lambda: asyncio.to_thread(lambda: victim.poll() is not None),
            timeout=60,
            what=f"the leader to die after {phase}",
        )
        assert victim.returncode == -signal.SIGKILL
        more = await _start_load(client, 60, "more")
        await until(lambda: _moves_done(growing), timeout=120, what="the standby to finish")
        terms = await growing.catalog.pool.fetchval("SELECT term FROM catalog.leader")
        assert terms >= 2
        results = await asyncio.gather(*(client.result(w, timeout=120) for w in ids + more))
        assert all(r["rows"] == 1 for r in results)
        await _check_cluster(growing, ids + more)
    finally:
        for proc in (victim, standby):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


async def test_a_stalled_leader_is_replaced_and_changes_nothing_when_it_wakes(
    growing: LiveCluster, tmp_path: Path
):
    """The leader stops itself (SIGSTOP) right after fencing a slot, keeping its session
    and lock; the standby finds its lease run out, ends its session and finishes the
    moves. Woken (SIGCONT), the old leader's next move call is refused by its stale term."""
    client = await growing.add_router()
    ids = await _start_load(client, 60, "wf")
    await growing.catalog.add_shard("c2", growing.shard_dsns["c2"])
    await growing.start_executor("c2", app="tests.apps.crash")
    await operations.rebalance(growing.catalog)
    victim_log = tmp_path / "victim.log"
    with victim_log.open("wb") as log:
        victim = _spawn_coordinator(growing, "move_fenced=stop@2", "victim", log)
    await until(
        lambda: growing.catalog.pool.fetchval("SELECT owner = 'victim' FROM catalog.leader"),
        what="the victim to lead",
    )
    standby = _spawn_coordinator(growing, None, "standby")
    try:
        await until(lambda: asyncio.to_thread(_stopped, victim.pid), what="the leader to stall")
        await until(
            lambda: growing.catalog.pool.fetchval("SELECT owner = 'standby' FROM catalog.leader"),
            what="the standby to take over",
        )
        await until(lambda: _moves_done(growing), timeout=120, what="the standby to finish")
        victim.send_signal(signal.SIGCONT)
        await until(
            lambda: asyncio.to_thread(
                lambda: (
                    "event=not_leader" in victim_log.read_text()
                    or "event=lease_lost" in victim_log.read_text()
                )
            ),
            what="the woken leader to find it no longer leads",
        )
        assert victim.poll() is None  # it goes on, as a standby
        results = await asyncio.gather(*(client.result(w, timeout=120) for w in ids))
        assert all(r["rows"] == 1 for r in results)
        await _check_cluster(growing, ids)
        owner = await growing.catalog.pool.fetchval("SELECT owner FROM catalog.leader")
        assert owner == "standby"
    finally:
        for proc in (victim, standby):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "T"


async def test_drain_then_remove_and_refusals(growing: LiveCluster):
    client = await growing.add_router()
    ids = await _start_load(client, 50, "x")
    with pytest.raises(CatalogError, match="already"):
        await growing.catalog.add_shard("c0", growing.shard_dsns["c0"])
    with pytest.raises(CatalogError, match="unreachable"):
        await growing.catalog.add_shard("c9", "postgresql://postgres@127.0.0.1:9/none")
    with pytest.raises(CatalogError, match="owns slots"):
        await operations.remove(growing.catalog, "c1")
    stop = asyncio.Event()
    await _run_coordinator(growing, stop)
    assert await operations.drain(growing.catalog, "c1") == SLOTS // 2
    with pytest.raises(CatalogError, match="in progress"):
        await operations.rebalance(growing.catalog)
    await until(lambda: _moves_done(growing), timeout=120, what="the drain")
    with pytest.raises(CatalogError, match="last active shard"):
        await operations.drain(growing.catalog, "c0")
    await growing.executors["c1"].shutdown()
    await operations.remove(growing.catalog, "c1")
    results = await asyncio.gather(*(client.result(w, timeout=60) for w in ids))
    assert all(r["rows"] == 1 for r in results)
    status = await operations.status(growing.catalog)
    assert [(s["id"], s["slots"]) for s in status["shards"]] == [("c0", SLOTS)]
    stop.set()


class StopTargetAfterFence(Faults):
    def __init__(self, stop_target: Any) -> None:
        super().__init__()
        self.stop_target = stop_target
        self.done = False

    async def point(self, name: str) -> None:
        if name == "move_fenced" and not self.done:
            self.done = True
            self.stop_target()


async def test_move_rolls_back_when_the_target_stays_down(growing: LiveCluster, pg_cluster: Any):
    client = await growing.add_router()
    ids = await _start_load(client, 40, "rb")
    await growing.catalog.add_shard("c2", growing.shard_dsns["c2"])
    await operations.rebalance(growing.catalog)
    term = int(
        await growing.catalog.pool.fetchval(
            "UPDATE catalog.leader SET term = term + 1 RETURNING term"
        )
    )
    faults = StopTargetAfterFence(lambda: pg_cluster.stop_one("c2"))
    mover = Mover(growing.catalog, term, faults, rollback_after=0.5)
    try:
        first = (await mover.live_moves())[0]
        await mover.run(first)
        assert first.phase == "rolled_back"
        owner = await growing.catalog.pool.fetchval(
            "SELECT shard_id FROM catalog.slots WHERE slot = $1", first.slot
        )
        state = await growing.fetch_on(
            owner, "SELECT state FROM shardflow.slots WHERE slot = $1", first.slot
        )
        assert state[0]["state"] == "owned", "the source serves the slot again"
    finally:
        pg_cluster.restart_one("c2")
    await mover.clean_rolled_back()
    await mover.close()
    assert await growing.count_on("c2", "SELECT count(*) FROM shardflow.slots") == 0
    await growing.catalog.pool.execute("DELETE FROM catalog.moves WHERE phase = 'planned'")
    results = await asyncio.gather(*(client.result(w, timeout=60) for w in ids))
    assert all(r["rows"] == 1 for r in results)


async def test_paused_executor_of_a_moving_slot_is_fenced(growing: LiveCluster):
    from shardflow.devcluster.launcher import free_port
    from tests.conftest import ExecutorProcess
    from tests.test_crash import _metric, _stopped

    client = await growing.add_router()
    await growing.executors["c0"].shutdown()
    port = free_port()
    paused = ExecutorProcess(
        growing.shard_dsns["c0"],
        "tests.apps.crash",
        {"SHARDFLOW_FAULTS": "after_claim=stop@1"},
        shard="c0",
        lease_seconds=30,
        metrics_port=port,
    )
    try:
        ids = await _start_load(client, 80, "p")
        await until(lambda: _stopped(paused), what="the executor to stall holding leases")
        await growing.start_executor("c0", app="tests.apps.crash")
        await growing.catalog.add_shard("c2", growing.shard_dsns["c2"])
        await growing.start_executor("c2", app="tests.apps.crash")
        stop = asyncio.Event()
        await _run_coordinator(growing, stop)
        await operations.drain(growing.catalog, "c0")  # every slot of c0 moves away
        await until(lambda: _moves_done(growing), timeout=120, what="the drain")
        results = await asyncio.gather(*(client.result(w, timeout=120) for w in ids))
        assert all(r["rows"] == 1 for r in results)
        paused.signal(signal.SIGCONT)
        await until(lambda: _metric(port, "shardflow_fenced_writes_total"), what="fenced writes")
        await _check_cluster(growing, ids)
        stop.set()
    finally:
        paused.close()


class CountsRunningMoves(Faults):
    """Counts moves between their first transition and 'done' (the fault points). The
    first moves wait at their first transition until `parallel` of them are there, so a
    mover that runs them one by one times out here rather than passing by luck."""

    def __init__(self, parallel: int) -> None:
        super().__init__()
        self.parallel = parallel
        self.running = 0
        self.peak = 0
        self.full = asyncio.Event()

    async def point(self, name: str) -> None:
        if name == "move_precopied":
            self.running += 1
            self.peak = max(self.peak, self.running)
            if self.running == self.parallel:
                self.full.set()
            await asyncio.wait_for(self.full.wait(), timeout=60)
        elif name == "move_done":
            self.running -= 1
        await asyncio.sleep(0.01)  # let the other moves reach their next step


async def test_moves_run_a_few_at_once_and_never_more(growing: LiveCluster):
    client = await growing.add_router()
    ids = await _start_load(client, 60, "par")
    await growing.catalog.add_shard("c2", growing.shard_dsns["c2"])
    planned = await operations.rebalance(growing.catalog)
    assert planned >= 6
    term = int(
        await growing.catalog.pool.fetchval(
            "UPDATE catalog.leader SET term = term + 1 RETURNING term"
        )
    )
    parallel = 3
    faults = CountsRunningMoves(parallel)
    mover = Mover(growing.catalog, term, faults, parallel=parallel)
    try:
        progress: list[int] = []
        assert await mover.run_all(progress.append) == planned
    finally:
        await mover.close()
    assert faults.peak == parallel and faults.running == 0
    assert progress == list(range(1, planned + 1))
    assert await _moves_done(growing)
    results = await asyncio.gather(*(client.result(w, timeout=60) for w in ids))
    assert all(r["rows"] == 1 for r in results)
    await _check_cluster(growing, ids)


async def test_a_router_with_a_stale_map_finds_moved_workflows(growing: LiveCluster):
    """A router that has not refreshed since before a shard was added and slots moved to
    it still finds a moved workflow (it looks again with a fresh map before a 404)."""
    stale = await growing.add_router(refresh_interval=3600)
    ids = await _start_load(stale, 60, "stale")
    assert all(r["rows"] == 1 for r in [await stale.result(w, timeout=60) for w in ids])
    await growing.catalog.add_shard("c2", growing.shard_dsns["c2"])
    await growing.start_executor("c2", app="tests.apps.crash")
    await operations.rebalance(growing.catalog)
    term = int(
        await growing.catalog.pool.fetchval(
            "UPDATE catalog.leader SET term = term + 1 RETURNING term"
        )
    )
    mover = Mover(growing.catalog, term, parallel=4)
    try:
        await mover.run_all()
    finally:
        await mover.close()
    on_c2 = {r["id"] for r in await growing.fetch_on("c2", "SELECT id FROM shardflow.workflows")}
    moved = [w for w in ids if w in on_c2]
    assert moved, "some workflows moved to the new shard"
    for wid in moved:
        doc = await stale.status(wid)
        assert doc["shard"] == "c2" and doc["status"] == "completed"


async def test_precopy_and_live_copy_split_a_slot_at_the_horizon(dsn: str):
    """A workflow that finishes in a transaction still open when the pre-copy's horizon is
    read is not in the pre-copy (its snapshot cannot see it) but is in the live copy: the
    two exports of a slot never both miss a row. The horizon is read in its own statement
    before the pre-copy's snapshot, as the mover does."""
    from shardflow.infra import pool as shard_pool
    from shardflow.shard.queries import query

    conns = [await shard_pool.connect(dsn) for _ in range(2)]
    flusher, mover = conns
    try:
        await flusher.execute("INSERT INTO shardflow.registry (name, version) VALUES ('w', '1')")
        await flusher.execute("SELECT shardflow.start_workflow('w', '{}'::jsonb, 'late')")
        slot = await flusher.fetchval("SELECT slot FROM shardflow.workflows WHERE id = 'late'")
        finishing = flusher.transaction()
        await finishing.start()
        await flusher.execute(
            "UPDATE shardflow.workflows SET status = 'completed', finished_at = now() "
            "WHERE id = 'late'"
        )
        horizon = await mover.fetchval(query("slot_precopy_horizon"))
        async with mover.transaction(isolation="repeatable_read", readonly=True):
            precopy = json.loads(await mover.fetchval(query("slot_export"), slot, horizon, True))
            await finishing.commit()  # commits after the pre-copy's snapshot
        live = json.loads(await mover.fetchval(query("slot_export"), slot, horizon, False))
        assert [w["id"] for w in precopy["workflows"]] == []
        assert [(w["id"], w["status"]) for w in live["workflows"]] == [("late", "completed")]
    finally:
        for conn in conns:
            await conn.close()


async def test_a_workflow_retried_after_the_precopy_moves_in_its_new_state(
    dsn: str, pg: PostgresServer, client: ShardClient, start_executor: Any
):
    """The pre-copy takes a failed workflow (finished before the horizon); it is then
    retried on the source, which still serves the slot, and completes. The live copy
    carries its new state, and the target must keep that one, not the pre-copied failure
    (it kept the first copy of every row, so the retry was lost in the move). The mover's
    own statements, in its order, on two real databases."""
    from shardflow.infra import pool as shard_pool
    from shardflow.shard.queries import query

    await start_executor()
    wid = await client.start("retry_me", {"key": uuid.uuid4().hex, "fail_times": 4})
    with pytest.raises(WorkflowFailedError):
        await client.result(wid, timeout=30)
    target_dsn = await create_database(pg)
    source, target = await shard_pool.connect(dsn), await shard_pool.connect(target_dsn)
    try:
        slot = await source.fetchval("SELECT slot FROM shardflow.workflows WHERE id = $1", wid)
        await source.execute("INSERT INTO shardflow.slots (slot, epoch) VALUES ($1, 1)", slot)
        horizon = await source.fetchval(query("slot_precopy_horizon"))
        async with source.transaction(isolation="repeatable_read", readonly=True):
            precopy = await source.fetchval(query("slot_export"), slot, horizon, True)
        assert (
            await target.fetchval(query("slot_import"), 1, "precopy", slot, 0, precopy, TERM) == 3
        )

        assert await client.retry(wid) == "pending"  # the source still serves the slot
        assert await client.result(wid, timeout=30) == {"first": "first", "attempts": 5}
        await source.execute(query("slot_fence"), slot, 2, TERM)
        live = await source.fetchval(query("slot_export"), slot, horizon, False)
        await target.fetchval(query("slot_import"), 1, "live", slot, 2, live, TERM)

        moved = await target.fetch("SELECT * FROM shardflow.workflows WHERE id = $1", wid)
        assert [
            (w["status"], w["output"] and json.loads(w["output"]), w["error"]) for w in moved
        ] == [("completed", {"first": "first", "attempts": 5}, None)]
        steps = await target.fetch(
            "SELECT name, status FROM shardflow.steps WHERE workflow_id = $1 ORDER BY seq", wid
        )
        assert [(s["name"], s["status"]) for s in steps] == [
            ("echo", "completed"),
            ("flaky", "completed"),
        ]
    finally:
        await source.close()
        await target.close()


# Every column of every row a move copies, in a stable order (events without their id,
# which the target numbers afresh).
_COPIED = {
    "workflows": "SELECT * FROM shardflow.workflows ORDER BY id",
    "steps": "SELECT * FROM shardflow.steps ORDER BY workflow_id, seq",
    "events": "SELECT workflow_id, name, payload, dedup_id, created_at FROM shardflow.events "
    "ORDER BY id",
    "ready": "SELECT * FROM shardflow.ready ORDER BY workflow_id",
    "app": "SELECT * FROM moved_app ORDER BY id",
    "directory": "SELECT * FROM shardflow.directory ORDER BY id",
}

_SOURCE_ROWS = """
INSERT INTO shardflow.registry (name, version) VALUES ('w', '1');
INSERT INTO shardflow.workflows (id, slot, routing_key, name, version, status, input, output,
    error, attempt, next_seq, signal_seq, cancel_requested, priority, wake_at, deadline,
    lease_owner, lease_epoch, lease_until, parent, created_at, updated_at, finished_at)
VALUES
    ('done', 7, 'done', 'w', '1', 'completed', '{"a": [1, 2.5, "x\\u00e9\\n"], "b": null}',
     'null', NULL, 2, 3, 1, false, 5, NULL, now() + interval '1 day', NULL, 4, NULL, NULL,
     '2026-01-02 03:04:05.678901+00', now(), now()),
    ('asleep', 7, 'key "q"', 'w', '1', 'sleeping', '"text"', NULL, '{"message": "boom"}', 1,
     2, 0, true, -3, now() + interval '1 hour', NULL, NULL, 9, NULL, 'done', now(), now(),
     NULL),
    ('other-slot', 8, 'other-slot', 'w', '1', 'completed', '{}', '{}', NULL, 0, 0, 0, false,
     0, NULL, NULL, NULL, 0, NULL, NULL, now(), now(), now());
INSERT INTO shardflow.steps (workflow_id, seq, name, status, output, error, attempts,
                             started_at) VALUES
    ('done', 0, 'a', 'completed', '{"n": 1}', NULL, 1, now()),
    ('done', 1, 'b', 'failed', NULL, '{"type": "E", "message": "\\"quoted\\""}', 3, NULL),
    ('asleep', 0, 'a', 'completed', '[]', NULL, 1, now());
INSERT INTO shardflow.events (workflow_id, name, payload, dedup_id) VALUES
    ('asleep', 'go', '{"ok": true}', 'd1'), ('asleep', 'go', NULL, NULL),
    ('asleep', 'stop', '[1]', NULL);
INSERT INTO shardflow.ready (workflow_id, slot, run_at, priority)
    VALUES ('asleep', 7, now() + interval '1 hour', -3);
INSERT INTO shardflow.directory (id, slot, routing_key) VALUES
    ('placed-elsewhere', 7, 'a key'), ('home-elsewhere', 8, 'another key');
CREATE TABLE moved_app (id serial PRIMARY KEY, slot integer, body jsonb, note text);
SELECT shardflow.colocate('moved_app', 'slot');
INSERT INTO moved_app (slot, body, note) VALUES (7, '{"k": [null]}', 'tab\tnewline\n'),
    (7, NULL, NULL), (8, '{}', 'elsewhere');
"""


def _json_null(row: Any) -> dict[str, Any]:
    """A row with a JSON null output read as SQL NULL: the copy makes one the other (an
    output reads the same either way; inputs keep their JSON null)."""
    return {k: None if k == "output" and v == "null" else v for k, v in dict(row).items()}


async def test_a_slots_rows_arrive_on_the_target_as_they_were(dsn: str, pg: PostgresServer):
    """Pre-copy and live copy of a slot carry every column of its workflows, steps, events,
    ready entries and co-located rows unchanged, JSON nulls, escapes and fractions of a
    second included, and nothing of another slot."""
    from shardflow.infra import pool as shard_pool
    from shardflow.shard.queries import query

    target_dsn = await create_database(pg)
    source, target = await shard_pool.connect(dsn), await shard_pool.connect(target_dsn)
    imported = query("slot_import")
    try:
        await source.execute(_SOURCE_ROWS)
        await target.execute(
            "CREATE TABLE moved_app (id serial PRIMARY KEY, slot integer, body jsonb, note text)"
        )
        await source.execute("INSERT INTO shardflow.slots (slot, epoch) VALUES (7, 1)")
        horizon = await source.fetchval(query("slot_precopy_horizon"))
        precopy = await source.fetchval(query("slot_export"), 7, horizon, True)
        assert (
            await target.fetchval(imported, 1, "precopy", 7, 0, precopy, TERM) == 3
        )  # done + steps
        await source.execute(query("slot_fence"), 7, 2, TERM)
        live = await source.fetchval(query("slot_export"), 7, horizon, False)
        await target.fetchval(imported, 1, "live", 7, 2, live, TERM)
        assert await target.fetchval(imported, 1, "live", 7, 2, live, TERM) == -1  # never twice

        await source.execute("DELETE FROM shardflow.workflows WHERE slot = 8")
        await source.execute("DELETE FROM moved_app WHERE slot = 8")
        await source.execute("DELETE FROM shardflow.directory WHERE slot = 8")
        for table, sql in _COPIED.items():
            want, got = await source.fetch(sql), await target.fetch(sql)
            assert [_json_null(r) for r in got] == [_json_null(r) for r in want], table
        slot = await target.fetchrow("SELECT state, epoch FROM shardflow.slots WHERE slot = 7")
        assert (slot["state"], slot["epoch"]) == ("incoming", 2)
    finally:
        await source.close()
        await target.close()
