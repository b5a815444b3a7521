"""Planner properties: an even spread, by the fewest moves, never onto inactive shards."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coordinator.planner import PlanError, plan

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
