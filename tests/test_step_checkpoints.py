"""Checkpoints of a running workflow's plain steps lock its row without rewriting it: the
step rows are the record of its progress, and every reader of that progress (claims,
cancels, retries, the status document) reads them."""

from __future__ import annotations

from datetime import UTC, datetime

from examples.bench import make_input
from shardflow.shard.client import ShardClient, StartRequest
from shardflow.shard.model import ClaimedWorkflow, ClaimRequest, StepRow, WorkflowRecord
from shardflow.shard.store import ShardStore

STARTED = datetime(2026, 11, 27, 6, 0, 0, 123456, tzinfo=UTC)


def steps_done(c: ClaimedWorkflow, *seqs: int) -> WorkflowRecord:
    """A record of ``c`` still running, with the steps of ``seqs`` completed."""
    steps = [StepRow(s, f"s{s}", "completed", str(s), None, 1, STARTED) for s in seqs]
    return WorkflowRecord(c.id, c.epoch, max(seqs) + 1, 0, steps=steps)


async def started_and_claimed(
    client: ShardClient, store: ShardStore, n: int, owner: str = "t-owner"
) -> list[ClaimedWorkflow]:
    await store.registry_add([("w3", "1", None)])
    ids = [await client.start("w3", make_input(i)) for i in range(n)]
    claimed = await store.workflow_claim_batch(ClaimRequest(owner, n, 30.0))
    assert sorted(c.id for c in claimed) == sorted(ids)
    return sorted(claimed, key=lambda c: ids.index(c.id))


async def row_versions(client: ShardClient, ids: list[str]) -> dict[str, tuple[str, str]]:
    rows = await client.pool.fetch(
        "SELECT id, xmin::text AS xmin, ctid::text AS ctid FROM shardflow.workflows "
        "WHERE id = ANY ($1)",
        ids,
    )
    return {r["id"]: (r["xmin"], r["ctid"]) for r in rows}


async def test_a_running_checkpoint_leaves_the_row_and_a_new_claim_replays_its_steps(
    client: ShardClient,
):
    """A flush of one running record (flush_one), of several (checkpoint_flush_plain) and
    one with a claim riding it (checkpoint_flush) writes the step rows and keeps the
    workflow's row version; released and claimed again, each workflow comes back with
    the steps it checkpointed."""
    store = ShardStore(client.pool)
    one, two, three, four = await started_and_claimed(client, store, 4)
    ids = [one.id, two.id, three.id, four.id]
    before = await row_versions(client, ids)
    assert await store.checkpoint_flush([steps_done(one, 0)]) == ({one.id: False}, [])
    both = [steps_done(two, 0), steps_done(three, 0, 1)]
    assert await store.checkpoint_flush(both) == ({two.id: False, three.id: False}, [])
    assert await store.checkpoint_flush([steps_done(one, 1)]) == ({one.id: False}, [])
    nothing = ClaimRequest("t-owner", 0, 30.0)
    assert await store.checkpoint_flush([steps_done(four, 0)], nothing) == ({four.id: False}, [])
    assert await row_versions(client, ids) == before

    document = await client.status(one.id)
    assert [s["seq"] for s in document["steps"]] == [0, 1]
    assert document["updated_at"] == document["steps"][-1]["finished_at"]

    released = [(c.id, c.epoch) for c in (one, two, three, four)]
    assert await store.workflow_release_many(released) == 4
    again = await store.workflow_claim_batch(ClaimRequest("t-owner", 4, 30.0))
    assert {c.id: c.next_seq for c in again} == {one.id: 2, two.id: 1, three.id: 2, four.id: 1}
    histories = await store.history_for(again)
    assert {wid: sorted(h.steps) for wid, h in histories.items()} == {
        one.id: [0, 1],
        two.id: [0],
        three.id: [0, 1],
        four.id: [0],
    }


async def test_a_parent_checkpointed_with_its_finishing_child_is_signalled(client: ShardClient):
    """A running parent whose child finishes in the same flush is not merely locked: the
    flush counts the child's finish on the parent's row, as it does for a parent outside
    the batch."""
    store = ShardStore(client.pool)
    await store.registry_add([("w3", "1", None)])
    await client.start_many([StartRequest("w3", make_input(0), id="parent")])
    await client.start_many([StartRequest("w3", make_input(1), id="child", parent="parent")])
    claimed = await store.workflow_claim_batch(ClaimRequest("t-owner", 2, 30.0))
    by_id = {c.id: c for c in claimed}
    child = by_id["child"]
    finished = WorkflowRecord(child.id, child.epoch, 1, 0, "completed", "1", parent="parent")
    records = [steps_done(by_id["parent"], 0), finished]
    nothing = ClaimRequest("t-owner", 0, 30.0)
    assert await store.checkpoint_flush(records, nothing) == (
        {"parent": False, "child": False},
        [],
    )
    signals = await client.pool.fetchval(
        "SELECT signal_seq FROM shardflow.workflows WHERE id = 'parent'"
    )
    assert signals == 1
    steps = await client.pool.fetchval("SELECT count(*) FROM shardflow.steps")
    assert steps == 1


async def test_a_stale_running_checkpoint_writes_no_step(client: ShardClient):
    """The lock is the fence: a record of an older lease epoch adds nothing."""
    store = ShardStore(client.pool)
    one, two = await started_and_claimed(client, store, 2)
    stale = [
        WorkflowRecord(c.id, c.epoch - 1, 1, 0, steps=steps_done(c, 0).steps) for c in (one, two)
    ]
    assert await store.checkpoint_flush(stale[:1]) == ({}, [])
    assert await store.checkpoint_flush(stale) == ({}, [])
    count = await client.pool.fetchval("SELECT count(*) FROM shardflow.steps")
    assert count == 0


async def test_a_cancel_of_a_released_workflow_with_steps_lets_it_compensate(
    client: ShardClient,
):
    """Pending again with checkpointed steps (its executor shut down), a workflow is not
    cancelled on the spot as one that never ran would be: it is queued to stop in its
    code, where its compensations run."""
    store = ShardStore(client.pool)
    ran, fresh = await started_and_claimed(client, store, 2)
    assert await store.checkpoint_flush([steps_done(ran, 0)]) == ({ran.id: False}, [])
    assert await store.workflow_release_many([(ran.id, ran.epoch), (fresh.id, fresh.epoch)]) == 2
    assert await client.cancel(ran.id) == "pending"
    assert await client.cancel(fresh.id) == "cancelled"
    (claimed,) = await store.workflow_claim_batch(ClaimRequest("t-owner", 2, 30.0))
    assert (claimed.id, claimed.cancel_requested, claimed.next_seq) == (ran.id, True, 1)


async def test_a_retry_after_a_recovery_limit_keeps_the_checkpointed_steps(
    client: ShardClient,
):
    """Failed by the recovery limit (no failed step to cut at), a workflow retried
    resumes after its last checkpointed step: the steps it completed are kept."""
    store = ShardStore(client.pool)
    (lost,) = await started_and_claimed(client, store, 1, owner="gone-executor")
    assert await store.checkpoint_flush([steps_done(lost, 0, 1)]) == ({lost.id: False}, [])
    # Past the limit the workflow is queued for a run that fails it with its
    # compensations; that run lost too, it is failed here.
    assert await store.reclaim_dead("me", 0) == 1
    (again,) = await store.workflow_claim_batch(ClaimRequest("gone-again", 1, 30.0))
    assert again.id == lost.id
    assert await store.reclaim_dead("me", 0) == 1
    assert (await client.status(lost.id))["status"] == "failed"
    assert await client.retry(lost.id) == "pending"
    document = await client.status(lost.id)
    assert [s["seq"] for s in document["steps"]] == [0, 1]
    (claimed,) = await store.workflow_claim_batch(ClaimRequest("t-owner", 1, 30.0))
    assert claimed.next_seq == 2
