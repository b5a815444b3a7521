"""Metrics of the coordinator (the cluster's view)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from metrics.shard import LATENCY_BUCKETS


class CoordinatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.is_leader = Gauge(
            "shardflow_coordinator_is_leader",
            "1 on the leading coordinator, 0 on standbys.",
            registry=r,
        )
        self.term = Gauge("shardflow_coordinator_term", "The leader's term.", registry=r)
        self.shard_up = Gauge(
            "shardflow_shard_up",
            "1 when the shard answered its health check.",
            ["shard"],
            registry=r,
        )
        self.moves_done = Counter("shardflow_slot_moves_total", "Slot moves finished.", registry=r)
        self.move_pause = Histogram(
            "shardflow_slot_move_pause_seconds",
            "Write pause of a moving slot: from fencing on the source to the catalog flip.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
