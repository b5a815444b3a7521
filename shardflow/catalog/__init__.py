"""The catalog: the cluster's shards, slot map, registry, schedules, limits and moves.

What the router and the coordinator both use lives here: the ``Catalog`` (the one way
into the catalog database), the slot map, and the requests a user makes of the cluster
(``admin``: membership and rebalancing; ``schedules``: cron schedules), which the
leading coordinator then carries out.
"""

from shardflow.catalog.store import Catalog, CatalogError, ShardInfo, SlotMap

__all__ = ["Catalog", "CatalogError", "ShardInfo", "SlotMap"]
