"""Metrics of the processes attached to one shard (executors and their GC).

Each executor owns a CollectorRegistry (no global state), served on its /metrics with the
process, GC and build figures every component has (metrics/standard.py). Names are
``shardflow_*`` in base units; labels stay low-cardinality; every series carries ``shard``.
The metrics of one label are kept bound to this executor's shard (``.observe``, ``.inc``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shardflow.metrics.standard import add_standard

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
# Start to finish of a workflow: milliseconds for a W3, up to days for one that waits for
# a person or a timer.
WORKFLOW_BUCKETS = (
    *LATENCY_BUCKETS,
    120.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    4 * 3600.0,
    12 * 3600.0,
    86400.0,
    7 * 86400.0,
)


class ShardMetrics:
    def __init__(
        self, shard: str = "0", registry: CollectorRegistry | None = None, standard: bool = True
    ) -> None:
        """``standard``: also the process, GC and build figures (not for an executor inside
        a router's process, whose registry serves them once)."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if standard:
            add_standard(r, "executor")
        self.shard = shard
        self.workflows_started = Counter(
            "shardflow_workflows_started_total",
            "Workflow runs started by this executor (first claim of an instance).",
            ["shard", "workflow"],
            registry=r,
        )
        self.workflows_completed = Counter(
            "shardflow_workflows_completed_total",
            "Workflows finished by this executor, by outcome.",
            ["shard", "workflow", "outcome"],
            registry=r,
        )
        self.workflow_duration = Histogram(
            "shardflow_workflow_duration_seconds",
            "Start (creation) to finish of workflows finished by this executor.",
            ["shard", "workflow"],
            buckets=WORKFLOW_BUCKETS,
            registry=r,
        )
        self.step_duration = Histogram(
            "shardflow_step_duration_seconds",
            "Duration of each step attempt, from its start to its outcome (completed, failed, "
            "retried; a transactional step's transaction included). With tracing on, its "
            "trace ID is the exemplar.",
            ["shard", "workflow", "step"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.step_retries = Counter(
            "shardflow_step_retries_total",
            "Step attempts that failed and were retried.",
            ["shard", "workflow"],
            registry=r,
        )
        self.claims = Counter(
            "shardflow_claims_total",
            "Claims made, by how: alone (a statement of their own) or with_flush (riding a "
            "checkpoint flush, one statement and one commit for both).",
            ["shard", "how"],
            registry=r,
        )
        self.handoffs = Counter(
            "shardflow_handoffs_total",
            "Workflows handed to this executor at their start (no claim), by outcome: taken, "
            "released to the queue (the executor was full, stopping or without the code), or "
            "lost (leased to it, never notified; found by its sweep and released).",
            ["shard", "outcome"],
            registry=r,
        )
        self.claim_batch_size = Histogram(
            "shardflow_claim_batch_size",
            "Workflows claimed per claim.",
            ["shard"],
            buckets=BATCH_BUCKETS,
            registry=r,
        ).labels(shard)
        self.claim_seconds = Histogram(
            "shardflow_claim_duration_seconds",
            "Latency of one claim (with a flush: from the request to the flush's end).",
            ["shard"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(shard)
        self.checkpoint_batch_size = Histogram(
            "shardflow_checkpoint_batch_size",
            "Workflow records per group-commit flush.",
            ["shard"],
            buckets=BATCH_BUCKETS,
            registry=r,
        ).labels(shard)
        self.checkpoint_seconds = Histogram(
            "shardflow_checkpoint_commit_duration_seconds",
            "Latency of one group-commit flush (one statement, one transaction).",
            ["shard"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(shard)
        self.fenced_writes = Counter(
            "shardflow_fenced_writes_total",
            "Writes rejected because the workflow's lease epoch had changed.",
            ["shard"],
            registry=r,
        ).labels(shard)
        self.reclaimed = Counter(
            "shardflow_lease_reclaims_total",
            "Workflows taken back from dead or stalled executors.",
            ["shard"],
            registry=r,
        ).labels(shard)
        self.inflight = Gauge(
            "shardflow_executor_inflight_workflows",
            "Workflows held in memory now.",
            ["shard"],
            registry=r,
        ).labels(shard)
        self.gc_rows = Counter(
            "shardflow_gc_workflows_removed_total",
            "Finished workflows removed by the GC.",
            ["shard"],
            registry=r,
        ).labels(shard)
        self.gc_last_run = Gauge(
            "shardflow_gc_last_run_timestamp_seconds",
            "When the GC last finished a run.",
            ["shard"],
            registry=r,
        ).labels(shard)
        self.gc_seconds = Histogram(
            "shardflow_gc_run_duration_seconds",
            "Duration of one GC run.",
            ["shard"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(shard)
