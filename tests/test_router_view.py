"""The router's cached view of the cluster, with a stale map, against real servers."""

from __future__ import annotations

from shardflow.metrics.router import RouterMetrics
from shardflow.router.settings import RouterSettings
from shardflow.router.view import ClusterView
from shardflow.shard.slots import slot_of
from tests.cluster_fixtures import SLOTS, LiveCluster


async def test_a_lookup_looks_again_when_the_map_changed_while_it_searched(
    growing: LiveCluster,
) -> None:
    """A router whose map predates a new shard and a move to it searches the old shards
    and finds nothing. If another request refreshes the map while that search runs, the
    lookup must still look again with the new map (it used to compare the version after
    its search with the version after its own refresh, saw no change, and answered 404
    for a workflow that had moved)."""
    settings = RouterSettings.load(
        {"catalog": growing.catalog_dsn, "port": 0, "refresh_interval": 3600}, env={}
    )
    view = await ClusterView.open(settings, RouterMetrics())
    try:
        assert "c2" not in view.clients
        workflow_id = "moved-while-searching"
        slot = slot_of(workflow_id, SLOTS)
        # The cluster grows behind the router's back: c2 joins and takes the slot, and the
        # workflow is there (its old shard has dropped it).
        await growing.catalog.add_shard("c2", growing.shard_dsns["c2"])
        await growing.catalog.assign("c2", [slot])
        await growing.fetch_on(
            "c2",
            "INSERT INTO shardflow.workflows (id, slot, routing_key, name, version, status,"
            " input) VALUES ($1, $2, $1, 'w', '1', 'pending', '{}')",
            workflow_id,
            slot,
        )

        search = view._locate
        searched: list[str | None] = []

        async def search_then_another_request_refreshes(
            wid: str, routing_key: str | None
        ) -> str | None:
            found = await search(wid, routing_key)
            searched.append(found)
            if len(searched) == 1:
                await view.refresh()  # another request, while this search ran
            return found

        view._locate = search_then_another_request_refreshes  # type: ignore[method-assign]
        assert await view.locate(workflow_id, None) == "c2"
        assert searched == [None, "c2"]  # the old map's shards, then the new map's
    finally:
        await view.close()
