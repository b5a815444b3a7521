"""Cluster-wide concurrency limits: the leading coordinator shares each one out.

A workflow name limited to L running instances across the cluster gets a share on every
shard, which the shard's claims respect (``shardflow.claimable``). Shares follow demand
(running plus queued instances on each shard). The sum stays within L at every moment:
a shard's running instances never exceed its share except just after the share was
lowered, so the coordinator counts ``max(running, share)`` as taken and gives out only
what is left of L, lowering shares before raising others.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardflow.catalog.store import Catalog
from shardflow.infra.pool import ShardPools
from shardflow.shard.admin import ShardAdmin


@dataclass
class Demand:
    shard: str
    share: int
    running: int
    queued: int
    recorded: bool = True  # the shard has a share row for the name


def fair_split(total: int, demands: list[int]) -> list[int]:
    """Water-filling: each gets at most its demand, the rest of ``total`` spread evenly."""
    out = [0] * len(demands)
    left, open_ = total, [i for i, d in enumerate(demands) if d > 0]
    while left > 0 and open_:
        each = max(1, left // len(open_))
        for i in list(open_):
            give = min(each, demands[i] - out[i], left)
            out[i] += give
            left -= give
            if out[i] >= demands[i]:
                open_.remove(i)
            if left == 0:
                break
    return out


def new_shares(limit: int, shards: list[Demand]) -> list[int]:
    """Shares to set, in the order given, keeping sum(max(running, share)) <= limit."""
    desired = fair_split(limit, [d.running + d.queued for d in shards])
    shares = [min(d.share, want) for d, want in zip(shards, desired, strict=True)]  # lower first
    budget = limit - sum(max(d.running, s) for d, s in zip(shards, shares, strict=True))
    for i, (d, want) in enumerate(zip(shards, desired, strict=True)):
        if want > shares[i] and budget > 0:
            before = max(d.running, shares[i])
            shares[i] = min(want, before + budget)
            budget -= max(d.running, shares[i]) - before
    return shares


class Limiter:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._pools = ShardPools(timeout=10)

    async def close(self) -> None:
        await self._pools.close()

    async def share_out(self) -> int:
        """One round over every limited name; how many shares changed."""
        limits = await self.catalog.limits()
        if not limits:
            return 0
        names = sorted(limits)
        shards = [s for s in await self.catalog.shards() if s.state != "down"]
        demand: dict[str, list[Demand]] = {n: [] for n in names}
        for shard in shards:
            pool = await self._pools.get(shard.dsn)
            for r in await ShardAdmin(pool).limits_demand(names):
                demand[r["name"]].append(
                    Demand(shard.id, r["share"] or 0, r["running"], r["queued"])
                )
        dsn = {s.id: s.dsn for s in shards}
        lowered: list[tuple[str, str, int, int]] = []
        raised: list[tuple[str, str, int, int]] = []
        for name in names:
            rows = demand[name]
            for d, share in zip(rows, new_shares(limits[name], rows), strict=True):
                if share != d.share or not d.recorded:
                    (lowered if share < d.share else raised).append(
                        (d.shard, name, limits[name], share)
                    )
        for shard_id, name, limit, share in lowered + raised:  # never above the limit between
            pool = await self._pools.get(dsn[shard_id])
            await ShardAdmin(pool).limit_share_set(name, limit, share)
        return len(lowered) + len(raised)
