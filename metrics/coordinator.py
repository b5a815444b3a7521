"""Metrics of the coordinator (the cluster's view)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from shardflow.metrics.shard import LATENCY_BUCKETS
from shardflow.metrics.standard import add_standard


class ServerCounters(Collector):
    """Counters the shards' servers keep themselves (pg_stat_database), exposed as read:
    their value does not restart with the coordinator, so rate() and increase() see only
    the server's own resets."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deadlocks: dict[str, float] = {}
        registry.register(self)

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter([self._deadlocks()])

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._deadlocks()
        for shard, value in sorted(self.deadlocks.items()):
            family.add_metric([shard], value)
        return iter([family])

    @staticmethod
    def _deadlocks() -> CounterMetricFamily:
        return CounterMetricFamily(
            "shardflow_pg_deadlocks",
            "Deadlocks detected in the shard's database (pg_stat_database's counter).",
            labels=["shard"],
        )


class CoordinatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        add_standard(r, "coordinator")
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
        self.schedule_ticks = Counter(
            "shardflow_schedule_ticks",
            "Cron ticks this coordinator handled while leading, by outcome (fired, skipped).",
            ["outcome"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "shardflow_queue_depth",
            "Live workflows by status (ready: runnable now).",
            ["shard", "status"],
            registry=r,
        )
        self.oldest_ready = Gauge(
            "shardflow_oldest_ready_age_seconds",
            "Age of the oldest runnable workflow.",
            ["shard"],
            registry=r,
        )
        self.lock_waits = Gauge(
            "shardflow_pg_lock_waits",
            "Backends waiting on a lock, by lock type (pg_locks).",
            ["shard", "locktype"],
            registry=r,
        )
        self.longest_lock_wait = Gauge(
            "shardflow_pg_longest_lock_wait_seconds",
            "Longest current lock wait (pg_stat_activity).",
            ["shard"],
            registry=r,
        )
        self.server_counters = ServerCounters(r)
        self.dead_tuples = Gauge(
            "shardflow_pg_dead_tuples",
            "Dead tuples of the hot tables (pg_stat_user_tables).",
            ["shard", "table"],
            registry=r,
        )
        self.oldest_xact = Gauge(
            "shardflow_pg_oldest_transaction_seconds",
            "Age of the oldest open transaction.",
            ["shard"],
            registry=r,
        )
        self.slots = Gauge("shardflow_shard_slots", "Slots owned per shard.", ["shard"], registry=r)
        self.moves_in_progress = Gauge(
            "shardflow_slot_moves_in_progress", "Slot moves planned or under way.", registry=r
        )
        self.move_pause = Histogram(
            "shardflow_slot_move_pause_seconds",
            "Write pause of a moving slot: from fencing on the source to the catalog flip.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
