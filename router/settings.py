"""Settings of a router process (``shardflow router``)."""

from __future__ import annotations

from dataclasses import dataclass

from shardflow.infra.logs import FORMATS
from shardflow.infra.settings import Settings, setting


@dataclass(frozen=True)
class RouterSettings(Settings):
    catalog: str = setting(help="DSN of the cluster catalog (libpq URL; sslmode=... for TLS)")
    host: str = setting("127.0.0.1", help="address to listen on")
    port: int = setting(8080, help="port to listen on (0 picks a free one)", minimum=0)
    tokens: list[str] = setting(
        [], help="bearer tokens accepted on /v1 (none configured: no authentication)"
    )
    admin_tokens: list[str] = setting(
        [],
        help="bearer tokens of the admin endpoints (shards, rebalance, schedule changes), "
        "also accepted on every other /v1 endpoint; none configured: admin endpoints "
        "answer 403",
    )
    max_body_bytes: int = setting(
        1024 * 1024, help="largest request body accepted (413 beyond)", minimum=1024
    )
    max_batch: int = setting(1000, help="largest batch of starts (413 beyond)", minimum=1)
    max_inflight: int = setting(
        4096, help="requests handled at once before answering 429", minimum=1
    )
    pool_size: int = setting(8, help="connections per shard", minimum=1)
    connect_timeout: float = setting(
        2.0, help="seconds to reach a shard before answering 503 (fail fast)", minimum=0.1
    )
    refresh_interval: float = setting(
        1.0, help="seconds between checks of the slot map version", minimum=0.05
    )
    move_wait: float = setting(
        10.0, help="seconds a request for a moving slot waits before a 503", minimum=0
    )
    max_result_wait: float = setting(60.0, help="longest long-poll of /result (seconds)", minimum=0)
    executors: bool = setting(
        False,
        help="also run an executor of every shard in this process (with --app): the starts "
        "this router accepts are leased to them and run here, their outcomes answered in "
        "memory (the fast path); other executors keep taking the rest",
    )
    executors_for: list[str] = setting(
        [],
        help="with executors: run them for these shards only (this router's home shards; "
        "repeatable; none: every shard); starts on other shards go to their executors",
    )
    app: list[str] = setting(
        [], help="module(s) defining the workflows of the in-process executors (repeatable)"
    )
    app_dir: str | None = setting(
        None, help="folder the app modules are imported from (default: the working directory)"
    )
    executor_concurrency: int = setting(
        512, help="workflows each in-process executor holds in memory at once", minimum=1
    )
    log_level: str = setting(
        "info", help="log level", choices=("debug", "info", "warning", "error")
    )
    log_format: str = setting("logfmt", help="log lines as logfmt or JSON", choices=FORMATS)

    def validate(self) -> None:
        super().validate()
        from shardflow.infra.errors import SettingsError

        if self.executors and not self.app:
            raise SettingsError(
                "setting executors needs app: pass --app MODULE (the workflows to run here)",
                setting="app",
            )
        if self.executors_for and not self.executors:
            raise SettingsError(
                "setting executors_for needs executors: pass --executors too",
                setting="executors_for",
            )
