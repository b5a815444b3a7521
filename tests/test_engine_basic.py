"""The engine end to end on one real shard with an in-process executor."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from examples.bench import make_input
from shardflow import (
    InvalidWorkflowIdError,
    SerializationError,
    ShardClient,
    StartRequest,
    UnknownWorkflowError,
    WorkflowConflictError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from shardflow.infra.errors import SlotMovedError
from shardflow.metrics.shard import ShardMetrics
from shardflow.shard.client import StartResult, start_each_on, start_many_on
from shardflow.shard.committer import GroupCommitter
from shardflow.shard.faults import Faults
from shardflow.shard.model import ClaimedWorkflow, ClaimRequest, StepRow, WorkflowRecord
from shardflow.shard.queries import query
from shardflow.shard.slots import slot_of
from shardflow.shard.store import ShardStore, flush_args, flush_payload


async def test_w3_completes_and_records_three_steps(client: ShardClient, start_executor: Any):
    await start_executor()
    wid = await client.start("w3", make_input(1))
    assert await client.result(wid, timeout=30) == {
        "reserved": 1,
        "charged": 10.25,
        "notified": True,
    }
    doc = await client.status(wid)
    assert doc["status"] == "completed"
    assert [s["name"] for s in doc["steps"]] == ["reserve", "charge", "notify"]
    assert all(s["status"] == "completed" and s["attempts"] == 1 for s in doc["steps"])
    assert doc["workflow"] == "w3" and doc["version"] == "1"


async def test_start_many_runs_every_workflow_once(client: ShardClient, start_executor: Any):
    await start_executor()
    results = await client.start_many([StartRequest("w3", make_input(i)) for i in range(300)])
    assert len({r.id for r in results}) == 300 and all(r.created for r in results)
    for r in results:
        await client.result(r.id, timeout=60)
    async with client.pool.acquire() as conn:
        steps = await conn.fetchval("SELECT count(*) FROM shardflow.steps")
        dupes = await conn.fetchval(
            "SELECT count(*) FROM (SELECT workflow_id, name FROM shardflow.steps "
            "GROUP BY 1, 2 HAVING count(*) > 1) d"
        )
    assert steps == 900 and dupes == 0


async def test_waiters_get_outcomes_of_any_size(client: ShardClient, start_executor: Any):
    """Completions reach waiters in the NOTIFY payload when they fit (about 7,000 bytes a
    NOTIFY) and are read back when they do not: both paths, mixed in one group commit."""
    await (await start_executor()).shutdown()  # registers the app's workflows
    sizes = [0, 10, 3000, 6500, 7990, 20_000, 100_000] * 6
    inputs = [{"i": i, "text": 'é"\\' * (n // 4)} for i, n in enumerate(sizes)]
    started = await client.start_many([StartRequest("echoing", x) for x in inputs])
    waits = [asyncio.create_task(client.result(r.id, timeout=60)) for r in started]
    await asyncio.sleep(0.2)  # every waiter registered before any workflow runs
    await start_executor()
    assert await asyncio.gather(*waits) == inputs


async def test_start_is_idempotent_by_id(client: ShardClient, start_executor: Any):
    await start_executor()
    first = await client.start("w3", make_input(7), id="order-7")
    again = await client.start("w3", make_input(7), id="order-7")
    assert first == again == "order-7"
    with pytest.raises(WorkflowConflictError):
        await client.start("w3", make_input(8), id="order-7")
    await client.result("order-7", timeout=30)
    async with client.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM shardflow.workflows") == 1


async def test_start_inside_callers_transaction(client: ShardClient, start_executor: Any):
    await start_executor()
    async with client.pool.acquire() as conn:
        await conn.execute("CREATE TABLE orders (id text primary key)")
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute("INSERT INTO orders VALUES ('a')")
                await client.start("w3", make_input(1), id="wf-a", conn=conn)
                raise RuntimeError("application rolls back")
        async with conn.transaction():
            await conn.execute("INSERT INTO orders VALUES ('b')")
            await client.start("w3", make_input(2), id="wf-b", conn=conn)
    with pytest.raises(WorkflowNotFoundError):
        await client.status("wf-a")
    assert (await client.result("wf-b", timeout=30))["reserved"] == 2


async def test_sql_api_starts_and_inspects(client: ShardClient, start_executor: Any):
    await start_executor()
    async with client.pool.acquire() as conn:
        wid = await conn.fetchval(
            "SELECT shardflow.start_workflow('w3', $1::jsonb, 'from-sql')",
            '{"order_id": 5, "amount": 1.5, "pad": "p"}',
        )
        assert wid == "from-sql"
        await client.result(wid, timeout=30)
        doc = await conn.fetchval("SELECT shardflow.workflow_status('from-sql')::text")
        assert '"status": "completed"' in doc
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.fetchval("SELECT shardflow.start_workflow('nope', '{}'::jsonb)")
        assert info.value.sqlstate == "SF001"


async def test_bad_input_is_refused_before_anything_is_written(
    client: ShardClient, start_executor: Any
):
    await start_executor()
    with pytest.raises(UnknownWorkflowError, match="unknown workflow 'nope'"):
        await client.start("nope", {})
    with pytest.raises(InvalidWorkflowIdError):
        await client.start("w3", {}, id="")
    with pytest.raises(InvalidWorkflowIdError):
        await client.start("w3", {}, id="x" * 201)
    with pytest.raises(SerializationError, match="input of workflow w3"):
        await client.start("w3", {"when": object()})
    with pytest.raises(SerializationError):
        await client.start("w3", {"nan": float("nan")})
    with pytest.raises(UnknownWorkflowError):
        await client.start_many([StartRequest("w3", {}), StartRequest("nope", {})])
    with pytest.raises(WorkflowNotFoundError):
        await client.status("missing")
    async with client.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM shardflow.workflows") == 0


async def test_failed_step_fails_workflow_with_its_error(client: ShardClient, start_executor: Any):
    await start_executor()
    wid = await client.start("failing", None)
    with pytest.raises(WorkflowFailedError) as info:
        await client.result(wid, timeout=30)
    assert info.value.error["type"] == "StepFailedError"
    doc = await client.status(wid)
    (row,) = doc["steps"]
    assert row["status"] == "failed" and row["attempts"] == 1
    assert row["error"]["type"] == "NonRetryableError"
    assert "Traceback" in row["error"]["traceback"]


def test_a_deadlock_or_serialization_failure_is_a_retryable_error():
    from shardflow.infra.errors import OverloadedError
    from shardflow.shard.client import translate

    for sqlstate in ("40P01", "40001"):
        error = type("PgError", (Exception,), {"sqlstate": sqlstate})("collided")
        assert isinstance(translate(error), OverloadedError)  # clients retry it (429)


async def test_a_coalesced_batch_starts_all_but_the_moved_slot(
    client: ShardClient, start_executor: Any
):
    """A router coalesces concurrent starts into one statement: a start whose slot this
    shard no longer owns comes back as its own SlotMovedError, and the others start (in
    all-or-nothing mode nothing would)."""
    await start_executor()
    ids = [f"coalesced-{i}" for i in range(20)]
    moved = next(i for i in ids if slot_of(i) % 2 == 1)
    async with client.pool.acquire() as conn:  # own the even slots only
        await conn.execute(
            "INSERT INTO shardflow.slots (slot, epoch) "
            "SELECT s, 1 FROM generate_series(0, 1023, 2) AS s"
        )
    requests = [StartRequest("w3", make_input(n), id=wid) for n, wid in enumerate(ids)]
    outcomes = await start_each_on(client.pool, requests)
    for wid, outcome in zip(ids, outcomes, strict=True):
        if slot_of(wid) % 2:
            assert isinstance(outcome, SlotMovedError) and wid[:40] in outcome.message
        else:
            assert isinstance(outcome, StartResult) and outcome.created and outcome.id == wid
    started = [o.id for o in outcomes if isinstance(o, StartResult)]
    assert 0 < len(started) < len(ids) and moved not in started
    for wid in started:
        assert (await client.result(wid, timeout=30))["reserved"] >= 0
    fresh = next(f"fresh-{i}" for i in range(100) if slot_of(f"fresh-{i}") % 2 == 0)
    with pytest.raises(SlotMovedError):
        await start_many_on(
            client.pool, [StartRequest("w3", {}, id=fresh), StartRequest("w3", {}, id=moved)]
        )
    async with client.pool.acquire() as conn:
        found = "SELECT count(*) FROM shardflow.workflows WHERE id = ANY ($1::text[])"
        assert await conn.fetchval(found, [fresh, moved]) == 0


async def test_a_router_waits_for_what_it_started_without_reading_back(
    client: ShardClient, dsn: str, start_executor: Any
):
    """Workflows a router's batcher created while its listener was up are expected: a wait
    for one reads nothing back, whether it comes before the completion or after it (the
    outcome heard meanwhile is kept). A workflow started elsewhere is read back once."""
    from shardflow.router.batcher import StartBatcher

    await start_executor()
    results = client.results
    await until_listening(results)
    batcher = StartBatcher(client)
    early = await asyncio.gather(
        *(batcher.start(StartRequest("w3", make_input(i))) for i in range(20))
    )
    reads = results.reads
    outcomes = await asyncio.gather(*(client.wait(r.id, 30) for r in early))
    assert [o["status"] for o in outcomes] == ["completed"] * 20
    late = await batcher.start(StartRequest("w3", make_input(99)))
    async with await ShardClient.connect(dsn) as other:  # another router: its own waiters
        await other.result(late.id, timeout=30)  # it finished (read back there, not here)
    assert (await client.wait(late.id, 30))["status"] == "completed"
    assert results.reads == reads  # neither the early waits nor the late one read back
    elsewhere = await client.start("w3", make_input(100))  # not through the batcher
    assert (await client.wait(elsewhere, 30))["status"] == "completed"
    assert results.reads > reads


async def until_listening(results: Any) -> None:
    for _ in range(500):
        if results.listening():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the result waiters never listened")


async def test_a_checkpoint_flush_writes_exactly_what_it_was_given(client: ShardClient):
    """The flush's one JSON parameter: times to the microsecond, JSON text with quotes
    and non-ASCII characters, a sleep back on the ready queue, a stale epoch ignored."""
    store = ShardStore(client.pool)
    await store.registry_add([("w3", "1", None)])
    wid = await client.start("w3", make_input(7))
    (claimed,) = await store.workflow_claim_batch(ClaimRequest("t-owner", 10, 30.0))
    started = datetime(2026, 11, 26, 1, 2, 3, 456789, tzinfo=UTC)
    wake = datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    output = '{"note": "d\\u00e9j\\u00e0 \\"vu\\"", "café": [1, 2.5, null]}'
    step = StepRow(0, "reserve", "completed", output, None, 2, started)
    stale = WorkflowRecord(wid, claimed.epoch - 1, 1, 0, status="completed", output="1")
    assert await store.checkpoint_flush([stale]) == ({}, [])
    record = WorkflowRecord(wid, claimed.epoch, 1, 0, status="sleeping", run_at=wake, steps=[step])
    assert await store.checkpoint_flush([record]) == ({wid: False}, [])
    async with client.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT w.status, w.wake_at, r.run_at, s.started_at, s.output::text AS output, "
            "s.attempts FROM shardflow.workflows w JOIN shardflow.ready r ON r.workflow_id = w.id "
            "JOIN shardflow.steps s ON s.workflow_id = w.id WHERE w.id = $1",
            wid,
        )
    assert row["status"] == "sleeping" and row["wake_at"] == wake and row["run_at"] == wake
    assert row["started_at"] == started and row["attempts"] == 2
    assert json.loads(row["output"]) == json.loads(output)


async def test_the_plain_flush_writes_what_the_full_one_does(client: ShardClient, dsn: str):
    """A flush of plain records without a claim takes a lean statement (flush_one for a
    single record, checkpoint_flush_plain for more): the same rows, the same outcome
    notification and the same fence as the full one (forced here by a claim of nothing
    riding it)."""
    store = ShardStore(client.pool)
    await store.registry_add([("w3", "1", None)])
    await client.start_many([StartRequest("w3", make_input(i)) for i in range(4)])
    claimed = await store.workflow_claim_batch(ClaimRequest("t-owner", 10, 30.0))
    alone, plain, other, full = claimed
    nothing = ClaimRequest("t-owner", 0, 30.0)
    started = datetime(2026, 11, 26, 1, 2, 3, 456789, tzinfo=UTC)

    def record(c: ClaimedWorkflow, seq: int) -> WorkflowRecord:
        last = seq == 2
        return WorkflowRecord(
            c.id,
            c.epoch,
            seq + 1,
            0,
            status="completed" if last else "running",
            output='{"done": "caf\u00e9"}' if last else None,
            steps=[StepRow(seq, f"s{seq}", "completed", str(seq), None, 1, started)],
        )

    notes: list[str] = []
    listener = await asyncpg.connect(dsn)
    await listener.add_listener("shardflow_done", lambda *args: notes.append(args[3]))
    try:
        for batch, claim in (([alone], None), ([plain, other], None), ([full], nothing)):
            stale = [
                WorkflowRecord(c.id, c.epoch - 1, 1, 0, status="completed", output="1")
                for c in batch
            ]
            assert await store.checkpoint_flush(stale, claim) == ({}, [])
            for seq in range(3):
                records = [record(c, seq) for c in batch]
                assert all(r.plain for r in records)
                applied = {c.id: False for c in batch}
                assert await store.checkpoint_flush(records, claim) == (applied, [])
        for _ in range(200):
            if len(notes) == 3:
                break
            await asyncio.sleep(0.01)
    finally:
        await listener.close()
    async with client.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT w.id, w.status, w.output::text, w.error, w.next_seq, w.wake_at, "
            "w.lease_owner, w.lease_until, w.finished_at IS NOT NULL AS finished, "
            "array_agg(array[s.seq::text, s.name, s.output::text, s.started_at::text] "
            "ORDER BY s.seq) AS steps "
            "FROM shardflow.workflows w JOIN shardflow.steps s ON s.workflow_id = w.id "
            "WHERE w.id = ANY ($1) GROUP BY w.id",
            [c.id for c in claimed],
        )
    by_id = {row["id"]: dict(row) | {"id": None} for row in rows}
    assert by_id[alone.id] == by_id[plain.id] == by_id[other.id] == by_id[full.id]
    assert by_id[full.id]["status"] == "completed" and by_id[full.id]["finished"]
    outcomes = {item[0]: item[1:] for note in notes for item in json.loads(note)}
    assert outcomes == {c.id: ["completed", '{"done": "café"}', None] for c in claimed}


def test_plain_records_are_those_that_touch_no_other_row():
    running_child = WorkflowRecord("c", 1, 1, 0, parent="p")
    finished_child = WorkflowRecord("c", 1, 1, 0, status="completed", parent="p")
    sleeping = WorkflowRecord("w", 1, 1, 0, status="sleeping")
    assert running_child.plain and WorkflowRecord("w", 1, 1, 0, status="failed").plain
    assert not finished_child.plain and not sleeping.plain


async def test_a_checkpoint_flush_finds_its_workflows_by_key(client: ShardClient):
    """The flush probes the primary key for the workflows it writes or locks; it never
    reads the partial indexes of running workflows, whose dead entries pile up between
    vacuums (statistics saying few are running once made the planner pick them)."""
    store = ShardStore(client.pool)
    await store.registry_add([("w3", "1", None)])
    await client.start_many([StartRequest("w3", make_input(i)) for i in range(400)])
    claimed = await store.workflow_claim_batch(ClaimRequest("t-owner", 400, 30.0))
    done = [WorkflowRecord(c.id, c.epoch, 1, 0, status="completed", output="1") for c in claimed]
    await store.checkpoint_flush(done[5:])
    records = [WorkflowRecord(c.id, c.epoch, 1, 0) for c in claimed[:5]]
    async with client.pool.acquire() as conn:
        await conn.execute("ANALYZE shardflow.workflows")
        for name, args in (
            ("checkpoint_flush", flush_args(records)),
            ("checkpoint_flush_plain", (flush_payload(records),)),
        ):
            rows = await conn.fetch("EXPLAIN (COSTS OFF) " + query(name), *args)
            plan = "\n".join(row[0] for row in rows)
            assert "workflows_pkey" in plan, name
            assert "workflows_running" not in plan, plan
            # A probe per record must not carry the batch's array: a B-tree scan sorts
            # its array keys again at every rescan (quadratic in the batch's size).
            rescans = [ln for ln in plan.splitlines() if "Index Cond" in ln and "= i" in ln]
            assert not [ln for ln in rescans if "ANY" in ln], plan
    assert (await store.checkpoint_flush(records))[0] == {c.id: False for c in claimed[:5]}


async def test_a_claim_rides_the_flush_in_flight_and_goes_alone_otherwise(client: ShardClient):
    """One statement for a flush and the executor's next claim, when a flush is under way
    and holds no record whose write could touch what a claim takes."""
    store = ShardStore(client.pool)
    await store.registry_add([("w3", "1", None)])
    metrics = ShardMetrics()
    committer = GroupCommitter(store, Faults(), metrics)

    def claims(how: str) -> float:
        return metrics.claims.labels(metrics.shard, how)._value.get()

    ids = [await client.start("w3", make_input(i)) for i in range(4)]
    (first,) = await committer.claim(ClaimRequest("t-owner", 1, 30.0))  # idle: alone
    assert first.id == ids[0] and claims("alone") == 1
    step = StepRow(0, "reserve", "completed", '{"reserved": 0}', None, 1, None)
    flushed = committer.enqueue(WorkflowRecord(first.id, first.epoch, 1, 0, steps=[step]))
    rode = await committer.claim(ClaimRequest("t-owner", 2, 30.0))
    assert [c.id for c in rode] == ids[1:3] and claims("with_flush") == 1
    assert (await flushed).applied
    # A suspension in the flush: the claim waits for it, then goes alone.
    sleep = WorkflowRecord(
        rode[0].id, rode[0].epoch, 0, 0, status="sleeping", run_at=datetime(2030, 1, 1, tzinfo=UTC)
    )
    suspended = committer.enqueue(sleep)
    (last,) = await committer.claim(ClaimRequest("t-owner", 5, 30.0))
    assert last.id == ids[3] and claims("alone") == 2 and claims("with_flush") == 1
    assert (await suspended).applied
    async with client.pool.acquire() as conn:
        steps = await conn.fetchval("SELECT count(*) FROM shardflow.steps")
        leased = await conn.fetchval(
            "SELECT count(*) FROM shardflow.workflows WHERE lease_owner = 't-owner'"
        )
    assert steps == 1 and leased == 3  # the sleeping one has no lease


async def test_a_claim_cancelled_while_it_waits_for_a_flush_leaves_its_workflows_to_release(
    client: ShardClient,
):
    store = ShardStore(client.pool)
    await store.registry_add([("w3", "1", None)])
    committer = GroupCommitter(store, Faults(), ShardMetrics())
    ids = [await client.start("w3", make_input(i)) for i in range(3)]
    running = await committer.claim(ClaimRequest("t-owner", 2, 30.0))
    committer.enqueue(WorkflowRecord(running[0].id, running[0].epoch, 0, 0))
    await asyncio.sleep(0)  # that flush is under way; the next one will hold this record:
    committer.enqueue(WorkflowRecord(running[1].id, running[1].epoch, 0, 0))
    waiting = asyncio.create_task(committer.claim(ClaimRequest("t-owner", 5, 30.0)))
    await asyncio.sleep(0)  # the claim registers to ride it
    waiting.cancel()
    await committer.drain()
    assert [c.id for c in committer.orphans] == ids[2:]
    released = await store.workflow_release_many([(c.id, c.epoch) for c in committer.orphans])
    assert released == 1
