"""Settings of an executor process (``shardflow executor``)."""

from __future__ import annotations

from dataclasses import dataclass

from shardflow.infra.logs import FORMATS
from shardflow.infra.settings import Settings, setting


@dataclass(frozen=True)
class ExecutorSettings(Settings):
    dsn: str = setting(
        help="DSN of the shard (libpq URL; sslmode=... for TLS, shardflow.schema=... names "
        "its schema when shards share a database)"
    )
    app: list[str] = setting(
        [], help="module(s) defining the workflows to run, e.g. examples.bench (repeatable)"
    )
    app_dir: str | None = setting(
        None, help="folder the app modules are imported from (default: the working directory)"
    )
    shard: str = setting("0", help="shard ID (as in the catalog), used in metrics and logs")
    catalog: str | None = setting(
        None, help="DSN of the cluster catalog, where the workflow names are registered"
    )
    concurrency: int = setting(
        512, help="workflows held in memory at once; asyncio makes many cheap", minimum=1
    )
    claim_batch: int = setting(
        128,
        help="workflows claimed per statement; large enough to amortise a round trip",
        minimum=1,
    )
    pool_size: int = setting(
        6,
        help="Postgres connections of the pool (claims, flushes, transactional steps)",
        minimum=2,
    )
    lease_seconds: float = setting(
        15.0,
        help="lease of a stalled-but-alive executor; a dead one is detected at once",
        minimum=0.5,
    )
    handoff: bool = setting(
        True,
        help="take workflows handed off at their start (leased by the start itself, no claim "
        "round trip) while this executor has room and no backlog of its kinds queues",
    )
    poll_interval: float = setting(
        0.1, help="fallback poll when no NOTIFY arrives (seconds)", minimum=0.005
    )
    maintenance_interval: float = setting(
        0.25,
        help="how often to look for dead peers and renew the lease (seconds)",
        minimum=0.01,
    )
    max_recovery_attempts: int = setting(
        5, help="recoveries from lost executors before a workflow is failed", minimum=1
    )
    shutdown_grace: float = setting(
        10.0, help="seconds running steps get to finish on SIGTERM", minimum=0
    )
    gc_interval: float = setting(60.0, help="seconds between GC runs", minimum=0.05)
    gc_retention: float = setting(
        7 * 86400.0, help="seconds a finished workflow is kept before GC removes it", minimum=0
    )
    gc_batch: int = setting(
        1000, help="rows deleted per GC transaction (short, never blocks claims)", minimum=1
    )
    metrics_port: int | None = setting(
        None, help="port of the /metrics endpoint (0 picks a free one; unset: none)", minimum=0
    )
    metrics_host: str = setting("127.0.0.1", help="address of the /metrics endpoint")
    log_level: str = setting(
        "info", help="log level", choices=("debug", "info", "warning", "error")
    )
    log_format: str = setting("logfmt", help="log lines as logfmt or JSON", choices=FORMATS)

    def validate(self) -> None:
        super().validate()
        from shardflow.infra.errors import SettingsError

        if not self.app:
            raise SettingsError(
                "setting app is required: pass --app MODULE or set SHARDFLOW_APP", setting="app"
            )
        if self.maintenance_interval >= self.lease_seconds:
            raise SettingsError(
                "setting maintenance_interval must be shorter than lease_seconds",
                setting="maintenance_interval",
            )
