"""Metrics of a router process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shardflow.metrics.shard import LATENCY_BUCKETS
from shardflow.metrics.standard import add_standard


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        add_standard(r, "router")
        self.request_duration = Histogram(
            "shardflow_http_request_duration_seconds",
            "HTTP requests by route template and status code.",
            ["route", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "shardflow_http_requests_in_flight", "HTTP requests being handled now.", registry=r
        )
        self.map_version = Gauge(
            "shardflow_router_slot_map_version", "Version of the slot map in use.", registry=r
        )
        self.map_refreshes = Counter(
            "shardflow_router_slot_map_refreshes_total",
            "Slot map reloads from the catalog.",
            registry=r,
        )
        self.slot_moved_retries = Counter(
            "shardflow_router_slot_moved_retries_total",
            "Requests retried on another shard after a 'slot moved' answer.",
            registry=r,
        )
