"""Hand-off at start: a start leases a new workflow to an executor with room and tells it by
NOTIFY, so the workflow runs without a claim; whatever it cannot take goes back to the queue."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import asyncpg

from examples.bench import make_input
from shardflow.shard.client import ShardClient, StartRequest, start_many_on
from shardflow.shard.model import ClaimedWorkflow
from shardflow.shard.queries import query
from shardflow.shard.store import ShardStore

OPEN = """INSERT INTO shardflow.executors (owner, lock_key, lease_until, kinds, handoff_until)
VALUES ($1, $2, now() + interval '1 minute', $3::text[], now() + interval '1 minute')"""


async def _status(client: ShardClient, wid: str) -> dict[str, Any]:
    async with client.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT status, lease_owner, lease_epoch,"
            " EXISTS (SELECT 1 FROM shardflow.ready r WHERE r.workflow_id = w.id) AS queued"
            " FROM shardflow.workflows w WHERE id = $1",
            wid,
        )
    return dict(row)


async def test_a_start_leases_to_an_open_executor_and_names_the_workflow_on_its_channel(
    client: ShardClient, dsn: str
):
    """The start function alone, with a stand-in executor row and its channel."""
    await ShardStore(client.pool).registry_add([("w3", "1", 30.0), ("echoing", "1", None)])
    listener = await asyncpg.connect(dsn)
    got: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("shardflow_handoff_42", lambda *a: got.put_nowait(a[3]))
    try:
        async with client.pool.acquire() as conn:
            await conn.execute(OPEN, "stand-in", 42, ["w3@1"])
        wid = await client.start("w3", make_input(7), id="handed")
        assert await _status(client, wid) == {
            "status": "running",
            "lease_owner": "stand-in",
            "lease_epoch": 1,
            "queued": False,
        }
        (item,) = json.loads(await asyncio.wait_for(got.get(), 10))
        claimed = ClaimedWorkflow.decode(item)
        assert (claimed.id, claimed.name, claimed.version, claimed.epoch) == (
            "handed",
            "w3",
            "1",
            1,
        )
        assert json.loads(claimed.input) == make_input(7)
        assert claimed.deadline is not None and claimed.deadline > claimed.created_at
        assert (claimed.routing_key, claimed.parent, claimed.priority) == ("handed", None, 0)
        # A kind the executor lacks is queued for a claim; being one it could never claim,
        # it does not keep the executor from taking the next start of its own kind.
        echo = await client.start("echoing", 1)
        assert (await _status(client, echo))["status"] == "pending"
        after_echo = await client.start("w3", make_input(11))
        assert (await _status(client, after_echo))["lease_owner"] == "stand-in"
        (item,) = json.loads(await asyncio.wait_for(got.get(), 10))
        assert item["id"] == after_echo
        async with client.pool.acquire() as conn:
            # Due workflows of its own kinds do: a backlog is claimed in its order.
            await conn.execute("UPDATE shardflow.executors SET handoff_until = NULL")
            backlog = await client.start("w3", make_input(12))
            await conn.execute(
                "UPDATE shardflow.executors SET handoff_until = now() + interval '1 minute'"
            )
            assert (await _status(client, backlog))["status"] == "pending"
            late = await client.start("w3", make_input(8))
            assert (await _status(client, late))["status"] == "pending"
            await conn.execute("DELETE FROM shardflow.ready")
            # Names with concurrency limits go through the claims, which count them.
            await conn.execute("INSERT INTO shardflow.limits (name, per_shard) VALUES ('w3', 5)")
            limited = await client.start("w3", make_input(9))
            assert (await _status(client, limited))["status"] == "pending"
            await conn.execute("DELETE FROM shardflow.ready")
            await conn.execute("DELETE FROM shardflow.limits")
            # A closed executor (handoff_until passed or unset) takes none.
            await conn.execute("UPDATE shardflow.executors SET handoff_until = NULL")
        closed = await client.start("w3", make_input(10))
        assert (await _status(client, closed))["status"] == "pending"
        assert got.empty()
    finally:
        await listener.close()


async def test_a_limited_name_waiting_for_room_does_not_hold_back_other_hand_offs(
    client: ShardClient,
):
    """A queued workflow of a name at its concurrency limit is no backlog for the executor:
    starts of its other kinds are still handed off; once the limit goes, the queued one is
    claimable and new starts queue behind it."""
    await ShardStore(client.pool).registry_add([("w3", "1", 30.0), ("echoing", "1", None)])
    async with client.pool.acquire() as conn:
        await conn.execute(OPEN, "stand-in", 43, ["w3@1", "echoing@1"])
        await conn.execute("INSERT INTO shardflow.limits (name, per_shard) VALUES ('echoing', 1)")
        waiting = await client.start("echoing", 1)
        assert (await _status(client, waiting))["queued"]
        handed = await client.start("w3", make_input(1))
        assert (await _status(client, handed))["lease_owner"] == "stand-in"
        await conn.execute("DELETE FROM shardflow.limits")
        behind = await client.start("w3", make_input(2))
        assert (await _status(client, behind))["status"] == "pending"


async def test_hand_offs_go_to_the_open_executors_in_proportion_to_their_room(
    client: ShardClient,
):
    """Two open executors, one nearly full (room for 1) and one nearly idle (room for 99):
    the idle one gets about 99 starts in 100. An executor of the code before, with no room
    written, counts as room for one."""
    await ShardStore(client.pool).registry_add([("echoing", "1", None)])
    async with client.pool.acquire() as conn:
        await conn.execute(OPEN, "busy", 51, ["echoing@1"])
        await conn.execute(OPEN, "idle", 52, ["echoing@1"])
        await conn.execute("UPDATE shardflow.executors SET handoff_room = 1 WHERE owner = 'busy'")
        await conn.execute("UPDATE shardflow.executors SET handoff_room = 99 WHERE owner = 'idle'")
        await client.start_many([StartRequest("echoing", i, f"p-{i}") for i in range(200)])
        counts = dict(
            await conn.fetch(
                "SELECT lease_owner, count(*) FROM shardflow.workflows GROUP BY lease_owner"
            )
        )
        assert counts.get("idle", 0) >= 170 and sum(counts.values()) == 200, counts
        assert None not in counts  # every one handed off
        await conn.execute("UPDATE shardflow.executors SET handoff_room = NULL")
        await client.start_many([StartRequest("echoing", i, f"q-{i}") for i in range(200)])
        both = await conn.fetch(
            "SELECT lease_owner, count(*) AS n FROM shardflow.workflows"
            " WHERE id LIKE 'q-%' GROUP BY lease_owner"
        )
        assert {r["lease_owner"] for r in both} == {"busy", "idle"}


async def test_a_batch_of_starts_is_handed_off_in_payloads_under_the_notify_limit(
    client: ShardClient, dsn: str
):
    await ShardStore(client.pool).registry_add([("echoing", "1", None)])
    listener = await asyncpg.connect(dsn)
    got: list[str] = []
    await listener.add_listener("shardflow_handoff_7", lambda *a: got.append(a[3]))
    try:
        async with client.pool.acquire() as conn:
            await conn.execute(OPEN, "stand-in", 7, ["echoing@1"])
            ids = [f"b-{i}" for i in range(300)]
            await conn.fetch(
                "SELECT * FROM shardflow.start_workflows($1::text[], $2::text[], $3::jsonb[],"
                " $4::text[], $5::text[], $6::double precision[])",
                ids + ids[:5],  # repeats in one batch are handed off once
                ["echoing"] * 305,
                [json.dumps("x" * 100)] * 305,
                [None] * 305,
                [None] * 305,
                [None] * 305,
            )
        for _ in range(100):
            if sum(len(json.loads(p)) for p in got) >= 300:
                break
            await asyncio.sleep(0.05)
        assert len(got) > 1 and all(len(p) < 8000 for p in got)
        assert sorted(item["id"] for p in got for item in json.loads(p)) == sorted(ids)
    finally:
        await listener.close()


async def test_an_executor_runs_handed_off_workflows_and_gives_back_what_it_cannot(
    client: ShardClient, start_executor: Any
):
    executor = await start_executor()
    async with client.pool.acquire() as conn:  # open, with its room written
        room = await conn.fetchval("SELECT handoff_room FROM shardflow.executors")
    assert room == math.ceil(executor.settings.concurrency * 0.75)
    ids = [await client.start("w3", make_input(i)) for i in range(20)]
    outcomes = [await client.wait(wid, timeout=30) for wid in ids]
    assert {o["status"] for o in outcomes} == {"completed"}
    taken = executor.metrics.handoffs.labels(executor.metrics.shard, "taken")._value.get()
    assert taken == 20  # none went through a claim
    # A hand-off of a kind it has no code for (its row says otherwise) goes back to the
    # queue: released with a new epoch, not run, not lost.
    async with client.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO shardflow.registry (name, version) VALUES ('ghost', '1');"
            "UPDATE shardflow.executors SET kinds = kinds || '{ghost@1}'"
        )
        await conn.execute("SELECT shardflow.start_workflow('ghost', '{}', 'g-1')")
    for _ in range(200):
        state = await _status(client, "g-1")
        if state["queued"]:
            break
        await asyncio.sleep(0.05)
    assert state == {"status": "pending", "lease_owner": None, "lease_epoch": 2, "queued": True}
    assert executor.metrics.handoffs.labels(executor.metrics.shard, "released")._value.get() == 1
    # Stopping closes the executor to hand-offs: later starts queue.
    await executor.shutdown()
    assert (await _status(client, await client.start("w3", make_input(99))))["queued"]


async def test_hand_offs_can_be_turned_off(client: ShardClient, start_executor: Any):
    executor = await start_executor(handoff=False)
    wid = await client.start("w3", make_input(1))
    assert (await client.wait(wid, timeout=30))["status"] == "completed"
    assert executor.metrics.handoffs.labels(executor.metrics.shard, "taken")._value.get() == 0


async def test_a_hand_off_whose_notify_never_came_goes_back_to_the_queue(
    client: ShardClient, start_executor: Any, monkeypatch: Any
):
    """A start whose NOTIFY fired where the executor does not listen (a Citus worker) or was
    lost: the workflow is leased to a live executor that does not know it. Its sweep finds
    it and gives it back; it then runs."""
    monkeypatch.setattr("shardflow.shard.executor.HANDOFF_SWEEP", 0.2)
    executor = await start_executor()
    async with client.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO shardflow.workflows (id, slot, routing_key, name, version, status, input,"
            " lease_owner, lease_epoch, updated_at) VALUES ('lost-1', 0, 'lost-1', 'w3', '1',"
            " 'running', $1::jsonb, $2, 1, now() - interval '1 minute')",
            json.dumps(make_input(5)),
            executor.owner,
        )
    assert (await client.wait("lost-1", timeout=30))["status"] == "completed"
    assert executor.metrics.handoffs.labels(executor.metrics.shard, "lost")._value.get() == 1
    async with client.pool.acquire() as conn:
        assert await conn.fetchval("SELECT lease_epoch FROM shardflow.workflows") == 3


async def test_a_start_reads_the_queue_backlog_by_key_whatever_its_plan_was_made_on(
    client: ShardClient, dsn: str
):
    """A start on a connection whose plan was made while the shard was empty (a router's
    pooled connection) reads workflows by key only: the kinds of the due entries, and the
    row of an ID already taken. It never reads the whole table, however large it is by
    then (until a vacuum made Postgres plan again, every start read all of it)."""
    await ShardStore(client.pool).registry_add([("w3", "1", 30.0)])
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(OPEN, "stand-in", 44, ["w3@1"])
        await start_many_on(conn, [StartRequest("w3", make_input(0), "first")])  # plan made
        await conn.execute(
            "INSERT INTO shardflow.workflows (id, slot, routing_key, name, version, status,"
            " input) SELECT 'old-' || g, 0, 'old-' || g, 'w3', '1', 'pending', '{}'"
            " FROM generate_series(1, 5000) g;"
            "INSERT INTO shardflow.ready (workflow_id, slot, run_at)"
            " VALUES ('old-1', 0, now() - interval '1 second')"
        )
        async with conn.transaction():
            later = [StartRequest("w3", make_input(i), f"later-{i}") for i in range(5)]
            again = StartRequest("w3", make_input(0), "first")  # its ID taken: a repeat
            results = await start_many_on(conn, [*later, again])
            scans = await conn.fetchval(
                "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'workflows'"
            )
        assert scans == 0
        assert [r.created for r in results] == [True] * 5 + [False]
        # The due entry of its own kind held the executor back: the starts queued behind it.
        assert (await _status(client, "later-0"))["status"] == "pending"
    finally:
        await conn.close()


async def _stand_in_with_timers(conn: asyncpg.Connection, lock_key: int, count: int) -> None:
    """A stand-in executor taking hand-offs of w3, and ``count`` sleeping w3 workflows
    whose timers are due in an hour."""
    await conn.execute(OPEN, "stand-in", lock_key, ["w3@1"])
    await conn.execute(
        "INSERT INTO shardflow.workflows (id, slot, routing_key, name, version, status, input)"
        " SELECT 'timer-' || g, 0, 'timer-' || g, 'w3', '1', 'sleeping', '{}'"
        " FROM generate_series(1, $1::integer) g",
        count,
    )
    await conn.execute(
        "INSERT INTO shardflow.ready (workflow_id, slot, run_at)"
        " SELECT 'timer-' || g, 0, now() + interval '1 hour'"
        " FROM generate_series(1, $1::integer) g",
        count,
    )


async def test_a_start_reads_the_backlog_s_kinds_only_when_something_is_due(
    client: ShardClient, dsn: str
):
    """With nothing due in the queue (the common case: starts handed off, timers in the
    future) a start, alone or in a batch, does not call the function that reads the due
    entries' kinds; with a due entry it does, and that entry holds the executor back."""
    await ShardStore(client.pool).registry_add([("w3", "1", 30.0)])
    conn = await asyncpg.connect(dsn)
    calls = "SELECT pg_stat_get_xact_function_calls('shardflow.handoff_held_kinds'::regproc)"

    async def start(ids: list[str]) -> tuple[int, list[str]]:
        """The calls the start made (read within its transaction: this session's counts
        are pending until it goes idle), and the new workflows' statuses."""
        async with conn.transaction():
            await conn.execute("SET LOCAL track_functions = 'pl'")
            before = await conn.fetchval(calls) or 0
            await start_many_on(conn, [StartRequest("w3", make_input(0), i) for i in ids])
            made = (await conn.fetchval(calls) or 0) - before
        return made, [(await _status(client, i))["status"] for i in ids]

    try:
        await _stand_in_with_timers(conn, 45, 1)
        assert await start(["one"]) == (0, ["running"])
        assert await start(["two", "three"]) == (0, ["running", "running"])
        await conn.execute("UPDATE shardflow.ready SET run_at = now() - interval '1 second'")
        assert await start(["four"]) == (1, ["pending"])
        assert await start(["five", "six"]) == (1, ["pending", "pending"])
    finally:
        await conn.close()


async def test_starts_and_claims_find_nothing_due_by_index_among_many_timers(
    client: ShardClient, dsn: str
):
    """A shard whose queue holds many future timers and no statistics for it (the queue
    is analyzed rarely): a start, alone or batched, and an idle claim each find that
    nothing is due by the run_at index. An EXISTS over `run_at <= now()` was planned as a
    sequential scan there, and read every timer at every start and every claim poll."""
    await ShardStore(client.pool).registry_add([("w3", "1", 30.0)])
    conn = await asyncpg.connect(dsn)
    try:
        await _stand_in_with_timers(conn, 46, 20000)
        assert await conn.fetchval(
            "SELECT last_analyze IS NULL AND last_autoanalyze IS NULL"
            " FROM pg_stat_user_tables WHERE relname = 'ready'"
        )
        async with conn.transaction():
            one = await start_many_on(conn, [StartRequest("w3", make_input(0), "alone")])
            batch = [StartRequest("w3", make_input(i), f"batched-{i}") for i in range(3)]
            many = await start_many_on(conn, batch)
            claimed = await conn.fetch(query("workflow_claim_batch"), "me", 10, 30.0, None, None)
            scans = await conn.fetchval(
                "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'ready'"
            )
        assert [r.status for r in [*one, *many]] == ["running"] * 4  # handed off
        assert claimed == [] and scans == 0
    finally:
        await conn.close()
