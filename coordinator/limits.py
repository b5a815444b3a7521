"""Cluster-wide concurrency limits: the leading coordinator shares each one out.

A workflow name limited to L running instances across the cluster gets a share on every
shard, which the shard's claims respect (``shardflow.claimable``). Shares follow demand
(running plus queued instances on each shard). The sum stays within L at every moment:
a shard's running instances never exceed its share except just after the share was
lowered, so the coordinator counts ``max(running, share)`` as taken and gives out only
what is left of L, lowering shares before raising others. Every share given is recorded
in the catalog (a raise before the shard hears of it, a cut after): a shard that cannot
be reached (marked down, partitioned, failing) may still run up to its recorded share,
so that share stays taken until the shard answers again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shardflow.catalog.store import Catalog
from shardflow.infra.dbfaults import is_unavailable
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
        given = await self.catalog.limit_shares()
        demand: dict[str, list[Demand]] = {n: [] for n in names}
        held = dict.fromkeys(names, 0)  # what unreachable shards may still run
        dsn: dict[str, str] = {}
        for shard in await self.catalog.shards():
            rows = None if shard.state == "down" else await self._demand(shard.dsn, names)
            if rows is None:
                for name in names:
                    held[name] += given.get((name, shard.id), 0)
                continue
            dsn[shard.id] = shard.dsn
            for r in rows:
                demand[r["name"]].append(
                    Demand(shard.id, r["share"] or 0, r["running"], r["queued"])
                )
        lowered: list[tuple[str, str, int, int]] = []
        raised: list[tuple[str, str, int, int]] = []
        for name in names:
            rows = demand[name]
            free = max(0, limits[name] - held[name])
            for d, share in zip(rows, new_shares(free, rows), strict=True):
                if share != d.share or given.get((name, d.shard)) != share:
                    (lowered if share < d.share else raised).append(
                        (d.shard, name, limits[name], share)
                    )
        for shard_id, name, limit, share in lowered:  # never above the limit between
            await ShardAdmin(await self._pools.get(dsn[shard_id])).limit_share_set(
                name, limit, share
            )
            await self.catalog.limit_share_record(name, shard_id, share)
        for shard_id, name, limit, share in raised:
            await self.catalog.limit_share_record(name, shard_id, share)
            await ShardAdmin(await self._pools.get(dsn[shard_id])).limit_share_set(
                name, limit, share
            )
        return len(lowered) + len(raised)

    async def _demand(self, dsn: str, names: list[str]) -> list[Any] | None:
        """The shard's shares, running and queued instances; None when it cannot answer."""
        try:
            return await ShardAdmin(await self._pools.get(dsn)).limits_demand(names)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            return None
