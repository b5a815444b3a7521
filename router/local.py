"""The fast path: executors of every shard inside a router's own process (``--executors``).

A start this router makes names its executor of that shard (``prefer``): the start
statement leases the workflow to it and answers with the hand-off, which goes to the
executor in memory (no NOTIFY); the executor tells the shard's result waiters each outcome
it writes, so a ``?wait=`` or a long poll on this router is answered without waiting for
the completion NOTIFY. Each is an executor like any other: its own advisory lock, lease
and fencing; peers in other processes recover its workflows if this process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator

import asyncpg
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from shardflow.catalog.admin import register_workflows
from shardflow.catalog.store import Catalog
from shardflow.infra.errors import ShardflowError
from shardflow.metrics.shard import ShardMetrics
from shardflow.router.settings import RouterSettings
from shardflow.shard.client import ShardClient, StartRequest, StartResult, start_each_on
from shardflow.shard.executor import Executor
from shardflow.shard.executor_settings import ExecutorSettings
from shardflow.shard.sdk import Registry

log = logging.getLogger("shardflow.router")


async def start_each(
    local: LocalExecutors | None,
    shard_id: str,
    conn: asyncpg.Connection | asyncpg.Pool,
    requests: list[StartRequest],
) -> list[StartResult | ShardflowError]:
    """``start_each_on`` for a router: with the fast path, the starts name this router's
    executor of the shard, which then takes what they leased to it."""
    prefer = None if local is None else local.owner(shard_id)
    outcomes = await start_each_on(conn, requests, prefer)
    if local is not None:
        local.hand(shard_id, [o for o in outcomes if isinstance(o, StartResult)])
    return outcomes


class LocalExecutors(Collector):
    """This router's executors, one per shard, started as shards appear in its slot map.
    Also the collector that serves their metrics on the router's /metrics."""

    def __init__(self, settings: RouterSettings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.registry = Registry.from_modules(settings.app, settings.app_dir)
        self.executors: dict[str, Executor] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}

    def add(self, shard_id: str, dsn: str, client: ShardClient) -> None:
        """Start an executor of a shard new to this router, in the background (a shard
        that is down is retried until it answers, as any executor does), unless the
        router runs executors for its home shards only and this is not one."""
        home = self.settings.executors_for
        if (
            shard_id in self.executors
            or shard_id in self._starting
            or (home and shard_id not in home)
        ):
            return
        task = asyncio.create_task(self._start(shard_id, dsn, client))
        self._starting[shard_id] = task

    async def _start(self, shard_id: str, dsn: str, client: ShardClient) -> None:
        s = self.settings
        settings = ExecutorSettings.load(
            {
                "dsn": dsn,
                "shard": shard_id,
                "app": s.app,
                "app_dir": s.app_dir,
                "concurrency": s.executor_concurrency,
                "log_level": s.log_level,
                "log_format": s.log_format,
            },
            env={},
        )
        metrics = ShardMetrics(shard_id, CollectorRegistry(), standard=False)
        executor = Executor(settings, self.registry, metrics=metrics)
        try:
            await executor.start()
            assert executor.runner is not None
            executor.runner.on_finished = client.results.resolve
            await register_workflows(self.catalog, shard_id, list(self.registry.workflows.values()))
        except BaseException:
            with contextlib.suppress(Exception):
                await executor.shutdown()
            raise
        finally:
            self._starting.pop(shard_id, None)
        self.executors[shard_id] = executor
        log.info("event=local_executor_started shard=%s owner=%s", shard_id, executor.owner)

    def owner(self, shard_id: str) -> str | None:
        """The owner ID a start on this shard names (None until its executor runs)."""
        executor = self.executors.get(shard_id)
        return None if executor is None or executor._stopping else executor.owner

    def hand(self, shard_id: str, results: list[StartResult]) -> None:
        """Give the executor the workflows its starts leased to it."""
        items = [json.loads(r.handoff) for r in results if r.handoff is not None]
        executor = self.executors.get(shard_id)
        if items and executor is not None:
            executor.take(items)

    async def close(self) -> None:
        for task in self._starting.values():
            task.cancel()
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        await asyncio.gather(
            *(e.shutdown() for e in self.executors.values() if not e._stopping),
            return_exceptions=True,
        )

    def collect(self) -> Iterator[Metric]:
        for executor in list(self.executors.values()):
            yield from executor.metrics.registry.collect()
