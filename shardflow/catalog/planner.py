"""The rebalance planner: the fewest slot moves that make the spread even.

Every active shard ends with floor(S/n) or ceil(S/n) slots; draining (or down)
shards end with none and never receive any. Only slots above a shard's target
move, so the number of moves is the minimum possible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shardflow.infra.errors import ShardflowError


class PlanError(ShardflowError):
    code = "plan_error"


@dataclass(frozen=True, slots=True)
class Move:
    slot: int
    source: str
    target: str


def targets(total: int, receivers: Sequence[str], current: Mapping[str, int]) -> dict[str, int]:
    """Slots each receiving shard should own; the extra ones go to those holding most now."""
    if not receivers:
        raise PlanError("no active shard can own slots: add or reactivate one first")
    base, extra = divmod(total, len(receivers))
    ranked = sorted(receivers, key=lambda s: (-current.get(s, 0), s))
    return {s: base + (1 if i < extra else 0) for i, s in enumerate(ranked)}


def plan(owners: Sequence[str], active: Sequence[str]) -> list[Move]:
    """Moves from ``owners`` (shard of each slot) to an even spread over ``active``."""
    counts: dict[str, int] = {}
    for owner in owners:
        counts[owner] = counts.get(owner, 0) + 1
    want = targets(len(owners), sorted(set(active)), counts)
    surplus: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for slot, owner in enumerate(owners):
        seen[owner] = seen.get(owner, 0) + 1
        if seen[owner] > want.get(owner, 0):
            surplus.append((slot, owner))
    deficit = [s for s in sorted(want) for _ in range(want[s] - counts.get(s, 0))]
    if len(deficit) != len(surplus):
        raise PlanError("internal planning mismatch")  # pragma: no cover - arithmetic
    return [
        Move(slot, source, target) for (slot, source), target in zip(surplus, deficit, strict=True)
    ]
