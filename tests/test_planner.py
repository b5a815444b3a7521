"""Planner properties: an even spread, by the fewest moves, never onto inactive shards;
and the moves' shared budget of rows per second."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardflow.catalog.planner import PlanError, plan
from shardflow.coordinator import moves

shards = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=64)


@given(owners=shards, active=st.sets(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1))
def test_plan_spreads_evenly_with_minimal_moves(owners: list[str], active: set[str]):
    moves = plan(owners, sorted(active))
    after = list(owners)
    for m in moves:
        assert after[m.slot] == m.source and m.target in active and m.source != m.target
        after[m.slot] = m.target
    counts = {s: after.count(s) for s in active}
    assert set(after) <= active
    assert max(counts.values()) - min(counts.values()) <= 1
    # Minimal: a slot moves only if its shard holds more than its share (or is inactive).
    floor = len(owners) // len(active)
    lower_bound = sum(max(0, owners.count(s) - (floor + 1)) for s in active)
    lower_bound += sum(1 for o in owners if o not in active)
    assert lower_bound <= len(moves)
    assert len({m.slot for m in moves}) == len(moves)
    assert len(moves) <= lower_bound + len(active)


def test_balanced_cluster_needs_no_move():
    assert plan(["a", "b", "a", "b"], ["a", "b"]) == []


def test_growing_from_two_to_three():
    owners = ["a"] * 6 + ["b"] * 6
    moves = plan(owners, ["a", "b", "c"])
    assert len(moves) == 4 and {m.target for m in moves} == {"c"}


def test_no_active_shard_is_an_error():
    try:
        plan(["a"], [])
    except PlanError as exc:
        assert "no active shard" in str(exc)
    else:
        raise AssertionError("expected PlanError")


def test_row_rate_charges_every_move_from_one_budget(monkeypatch: pytest.MonkeyPatch):
    """Moves under way share one budget of rows per second: each waits until its rows
    are paid for, queued behind those copied before it; 0 (or nothing copied) never waits.
    A fake clock: no wall-clock time is measured."""
    now = [100.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(round(seconds, 6))

    monkeypatch.setattr(moves.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(moves.asyncio, "sleep", sleep)

    async def scenario() -> None:
        rate = moves.RowRate(1000)
        await rate.spend(500)  # 0.5 s of budget
        await rate.spend(1500)  # another move at the same moment: behind the first
        now[0] += 10  # a long quiet spell: the budget does not pile up credit
        await rate.spend(100)
        await rate.spend(-1)  # an import applied before (-1 rows) costs nothing
        await moves.RowRate(0).spend(10**6)

    asyncio.run(scenario())
    assert waits == [0.5, 2.0, 0.1]
