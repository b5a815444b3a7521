"""Cluster membership and rebalancing requests (CLI and HTTP); the leader executes moves."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from shardflow.catalog.planner import plan
from shardflow.catalog.store import Catalog, CatalogError
from shardflow.infra import pool as shard_pool
from shardflow.shard.admin import ShardAdmin
from shardflow.shard.sdk import AnyWorkflow


async def register_workflows(
    catalog: Catalog, shard_id: str, definitions: list[AnyWorkflow]
) -> None:
    """The workflows an executor of ``shard_id`` runs, the cron schedules they declare and
    their concurrency limits, in the catalog (routers learn the names from there)."""
    from shardflow.catalog import schedules

    await catalog.registry_add(shard_id, [(w.name, w.version) for w in definitions])
    for w in definitions:
        if w.schedule is not None:
            await schedules.declare(catalog, w.name, w.schedule)
        await catalog.limit_set(w.name, w.max_running)


class UnknownShardError(CatalogError):
    """No shard of that ID in the catalog (HTTP 404)."""

    code = "not_found"


class ClusterConflictError(CatalogError):
    """The cluster's state does not allow the operation now (see the message)."""

    code = "cluster_conflict"


async def _queue(catalog: Catalog, active: list[str]) -> int:
    smap = await catalog.slot_map()
    moves = plan(smap.owners, active)
    if moves:
        await catalog.moves_plan([(m.slot, m.source, m.target) for m in moves])
    return len(moves)


async def rebalance(catalog: Catalog) -> int:
    """Plan an even spread over the active shards; returns the number of moves queued."""
    if await catalog.moves_live():
        raise ClusterConflictError("a rebalance is already in progress; wait for it to finish")
    active = [s.id for s in await catalog.shards() if s.state == "active"]
    return await _queue(catalog, active)


async def drain(catalog: Catalog, shard_id: str) -> int:
    shards = {s.id: s for s in await catalog.shards()}
    if shard_id not in shards:
        raise UnknownShardError(f"unknown shard {shard_id}")
    others = [s.id for s in shards.values() if s.id != shard_id and s.state == "active"]
    if not others:
        raise ClusterConflictError(f"cannot drain {shard_id}: it is the last active shard")
    if await catalog.moves_live():
        raise ClusterConflictError("moves are in progress; wait for them to finish")
    await catalog.shard_set_state(shard_id, "draining")
    return await _queue(catalog, others)


async def remove(catalog: Catalog, shard_id: str) -> None:
    if shard_id not in {s.id for s in await catalog.shards()}:
        raise UnknownShardError(f"unknown shard {shard_id}")
    if not await catalog.shard_remove(shard_id):
        raise ClusterConflictError(
            f"shard {shard_id} still owns slots or takes part in a move: drain it first"
        )


async def status(catalog: Catalog) -> dict[str, Any]:
    smap = await catalog.slot_map()
    counts: dict[str, int] = {}
    for owner in smap.owners:
        counts[owner] = counts.get(owner, 0) + 1
    leader = await catalog.leader()
    moves = await catalog.moves_live()
    return {
        "slots": smap.slots,
        "map_version": smap.version,
        "shards": [
            {"id": s.id, "state": s.state, "slots": counts.get(s.id, 0)}
            for s in smap.shards.values()
        ],
        "leader": None
        if leader is None or leader["owner"] is None or leader["expired"]
        else {
            "owner": leader["owner"],
            "term": leader["term"],
            "since": leader["since"].isoformat(),
        },
        "moves": [
            {
                "id": m["id"],
                "slot": m["slot"],
                "source": m["source"],
                "target": m["target"],
                "phase": m["phase"],
                "rows_copied": m["rows_copied"],
                "error": m["error"],
            }
            for m in moves
        ],
    }


async def init(catalog: Catalog, slots: int, shards: dict[str, str]) -> list[str]:
    """Create the catalog and its first shards with the slots spread over them.

    Idempotent, for a deployment's init job: on an existing cluster the slot count must
    match, shards already known are left alone and new ones join owning no slots
    (`cluster rebalance` then moves slots to them). Returns the shards added.
    """
    await catalog.create(slots)
    existing = await catalog.slot_count()
    if existing != slots:
        raise CatalogError(f"the cluster was created with {existing} slots, not {slots}")
    known = {s.id for s in await catalog.shards()}
    added = [shard_id for shard_id in shards if shard_id not in known]
    for shard_id in added:
        await catalog.add_shard(shard_id, shards[shard_id])
    if not known:
        await catalog.spread()
    return added


async def define_workflow(catalog: Catalog, name: str, definition: str) -> str:
    """Define a SQL workflow on every shard, then register it so routers accept starts.
    The definition is JSON text; a bad one is refused by the first shard, with its reason."""
    try:
        json.loads(definition)
    except ValueError as exc:
        raise CatalogError(f"the definition is not JSON: {exc}") from None
    versions = set()
    for shard in await catalog.shards():
        conn = await shard_pool.connect(shard.dsn, timeout=10)
        try:
            version = await ShardAdmin(conn).define_workflow(name, definition)
        except asyncpg.InvalidParameterValueError as exc:
            raise CatalogError(f"workflow {name} refused: {exc}") from None
        finally:
            await shard_pool.close_connection(conn)
        await catalog.registry_add(shard.id, [(name, version)])
        versions.add(version)
    if not versions:
        raise CatalogError("the cluster has no shard to define the workflow on")
    return versions.pop()
