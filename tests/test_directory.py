"""A workflow ID is unique across the cluster, whatever its routing key (issue #31)."""

from __future__ import annotations

import asyncpg
import pytest

from examples.bench import make_input
from shardflow.coordinator.directory import DirectorySweeper
from shardflow.infra.errors import WorkflowConflictError
from shardflow.shard.client import ShardClient
from tests.cluster_fixtures import SHARDS, LiveCluster


def _keys_elsewhere(cluster: LiveCluster, wid: str, n: int = 2) -> list[str]:
    """Routing keys that place a workflow on shards other than its ID's home shard, each
    on a different shard."""
    home, found, i = cluster.shard_of(wid), {}, 0
    while len(found) < n:
        key, i = f"key-{i}", i + 1
        shard = cluster.shard_of(key)
        if shard != home and shard not in found:
            found[shard] = key
    return list(found.values())


async def _rows(cluster: LiveCluster, shard: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(cluster.shard_dsns[shard])
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _age(cluster: LiveCluster, shard: str) -> None:
    """Make the shard's directory rows older than a start in flight can be."""
    sql = "UPDATE shardflow.directory SET created_at = now() - interval '1 minute'"
    await _rows(cluster, shard, sql)


async def _count(cluster: LiveCluster, wid: str) -> int:
    sql = "SELECT count(*) AS n FROM shardflow.workflows WHERE id = $1"
    return sum([(await _rows(cluster, s, sql, wid))[0]["n"] for s in SHARDS])


async def test_the_same_id_under_another_routing_key_is_the_same_workflow(cluster: LiveCluster):
    client = await cluster.add_router()
    wid = "unique-1"
    first_key, second_key = _keys_elsewhere(cluster, wid)
    first = await client.start("w3", make_input(1), id=wid, routing_key=first_key)
    again = await client.start("w3", make_input(1), id=wid, routing_key=second_key)
    assert again["shard"] == first["shard"] == cluster.shard_of(first_key)
    plain = await client.start("w3", make_input(1), id=wid)  # under its own key
    assert plain["shard"] == first["shard"]
    for key in (second_key, None):
        with pytest.raises(WorkflowConflictError):
            await client.start("w3", make_input(2), id=wid, routing_key=key)
    assert await _count(cluster, wid) == 1
    assert (await client.status(wid))["shard"] == first["shard"]  # found by its ID alone


async def test_an_id_started_under_itself_first_stays_unique(cluster: LiveCluster):
    client = await cluster.add_router()
    wid = "unique-2"
    (key,) = _keys_elsewhere(cluster, wid, 1)
    first = await client.start("w3", make_input(1), id=wid)
    again = await client.start("w3", make_input(1), id=wid, routing_key=key)
    assert again["shard"] == first["shard"] == cluster.shard_of(wid)
    with pytest.raises(WorkflowConflictError):
        await client.start("w3", make_input(2), id=wid, routing_key=key)
    assert await _count(cluster, wid) == 1


async def test_an_orphan_row_is_claimed_by_the_next_start(cluster: LiveCluster):
    """A crash between the directory row and the start: the retry takes the row over (once
    the row is older than a start still on its way could be)."""
    client = await cluster.add_router()
    wid = "unique-3"
    lost_key, key = _keys_elsewhere(cluster, wid)
    home = await ShardClient.connect(cluster.shard_dsns[cluster.shard_of(wid)])
    try:
        assert await home.directory_claim(wid, lost_key) == lost_key  # then "the crash"
        await _age(cluster, cluster.shard_of(wid))
        doc = await client.start("w3", make_input(3), id=wid, routing_key=key)
        assert doc["shard"] == cluster.shard_of(key)
        assert await home.directory_holder(wid) == key
        assert (await client.start("w3", make_input(3), id=wid))["shard"] == doc["shard"]
        # An orphan met by a start under the ID itself is dropped, and the start goes on.
        other = "unique-4"
        (away,) = _keys_elsewhere(cluster, other, 1)
        owner = await ShardClient.connect(cluster.shard_dsns[cluster.shard_of(other)])
        try:
            assert await owner.directory_claim(other, away) == away
            await _age(cluster, cluster.shard_of(other))
            started = await client.start("w3", make_input(4), id=other)
            assert started["shard"] == cluster.shard_of(other)
            assert await owner.directory_holder(other) is None
        finally:
            await owner.close()
    finally:
        await home.close()
    assert await _count(cluster, wid) == 1


async def test_a_batch_with_mixed_keys_makes_one_workflow_per_id(cluster: LiveCluster):
    client = await cluster.add_router()
    wid = "unique-5"
    k1, k2 = _keys_elsewhere(cluster, wid)
    items = [
        {"workflow": "w3", "input": make_input(5), "id": wid, "routing_key": k1},
        {"workflow": "w3", "input": make_input(5), "id": wid, "routing_key": k2},
        {"workflow": "w3", "input": make_input(5), "id": wid},
        {"workflow": "w3", "input": make_input(6), "id": wid, "routing_key": k2},
        {"workflow": "w3", "input": make_input(7), "id": "unique-6", "routing_key": k1},
    ]
    results = await client.start_many(items)
    assert sum(1 for r in results[:3] if r.get("created")) == 1
    assert len({r["shard"] for r in results[:3]}) == 1
    assert results[3]["error"]["code"] == "conflict"
    assert results[4]["created"]
    assert await _count(cluster, wid) == 1


async def test_directory_rows_go_with_their_workflows(cluster: LiveCluster):
    """The leader's sweep removes the rows whose workflow is gone (its shard's GC, or
    never started), and keeps the others."""
    client = await cluster.add_router()
    kept, removed, orphan = "unique-7", "unique-8", "unique-9"
    for wid in (kept, removed):
        (key,) = _keys_elsewhere(cluster, wid, 1)
        await client.start("w3", make_input(8), id=wid, routing_key=key)
        await client.result(wid, timeout=30)
    (away,) = _keys_elsewhere(cluster, orphan, 1)
    home = await ShardClient.connect(cluster.shard_dsns[cluster.shard_of(orphan)])
    try:
        await home.directory_claim(orphan, away)
    finally:
        await home.close()
    for shard in SHARDS:  # the GC of the workflow's shard, and the rows' age past the grace
        await _rows(cluster, shard, "DELETE FROM shardflow.steps WHERE workflow_id = $1", removed)
        await _rows(cluster, shard, "DELETE FROM shardflow.workflows WHERE id = $1", removed)
    sweeper = DirectorySweeper(cluster.catalog, grace=0)
    try:
        assert await sweeper.sweep() == 2
    finally:
        await sweeper.close()
    held = "SELECT id FROM shardflow.directory"
    left = {r["id"] for s in SHARDS for r in await _rows(cluster, s, held)}
    assert kept in left and removed not in left and orphan not in left
