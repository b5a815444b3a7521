"""The router's cached view of the cluster: slot map, registry, one client per shard."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shardflow.catalog.store import Catalog, SlotMap
from shardflow.infra.errors import ShardUnavailableError, SlotMovedError
from shardflow.metrics.router import RouterMetrics
from shardflow.router.batcher import StartBatcher
from shardflow.router.local import LocalExecutors
from shardflow.router.settings import RouterSettings
from shardflow.shard.client import ShardClient
from shardflow.shard.slots import slot_of

log = logging.getLogger("shardflow.router")
T = TypeVar("T")


REGISTRY_RECHECK = 0.2  # seconds between catalog reads caused by unknown names


class ClusterView:
    def __init__(self, settings: RouterSettings, catalog: Catalog, metrics: RouterMetrics) -> None:
        self.settings = settings
        self.catalog = catalog
        self.metrics = metrics
        self.map: SlotMap | None = None
        self.registry: dict[str, list[str]] = {}
        self.clients: dict[str, ShardClient] = {}
        self.batchers: dict[str, StartBatcher] = {}
        # The fast path (--executors): an executor of every shard in this process.
        self.local = LocalExecutors(settings, catalog) if settings.executors else None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._registry_read = 0.0
        self._registry_lock = asyncio.Lock()
        self._refreshes = 0  # completed refreshes: requests that wait on one share it

    @classmethod
    async def open(cls, settings: RouterSettings, metrics: RouterMetrics) -> ClusterView:
        view = cls(settings, await Catalog.connect(settings.catalog), metrics)
        await view.refresh(force=True)
        view._task = asyncio.create_task(view._watch())
        return view

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.local is not None:
            await self.local.close()
        for client in self.clients.values():
            await client.close()
        await self.catalog.close()

    async def refresh(self, *, force: bool = False, unless_since: int | None = None) -> None:
        """Read the slot map again if its version changed (always with ``force``), unless
        a refresh completed since the count ``unless_since`` was read: the requests that
        met a moved slot at once then share one read of the catalog instead of queueing
        one each."""
        async with self._lock:
            if unless_since is not None and self._refreshes != unless_since:
                return
            await self._refresh(force)
            self._refreshes += 1

    async def _refresh(self, force: bool) -> None:
        version = await self.catalog.map_version()
        if not force and self.map is not None and version == self.map.version:
            self.registry = await self.catalog.registry()
            return
        new_map = await self.catalog.slot_map()
        for shard in new_map.shards.values():
            if shard.id not in self.clients:
                self.clients[shard.id] = await ShardClient.connect(
                    shard.dsn,
                    pool_size=self.settings.pool_size,
                    min_size=0,
                    connect_timeout=self.settings.connect_timeout,
                )
                self.batchers[shard.id] = StartBatcher(
                    self.clients[shard.id], local=self.local, shard_id=shard.id
                )
                if self.local is not None:
                    self.local.add(shard.id, shard.dsn, self.clients[shard.id])
        self.map = new_map
        self.registry = await self.catalog.registry()
        self.metrics.map_version.set(new_map.version)
        self.metrics.map_refreshes.inc()
        log.info("event=slot_map version=%d shards=%d", new_map.version, len(new_map.shards))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_interval)
            with contextlib.suppress(Exception):
                await self.refresh()

    async def knows(self, name: str) -> bool:
        """Whether a workflow name is registered. A miss reads the catalog again (at most
        every 0.2 s): a router started alongside new executors must not refuse their
        names until its next periodic refresh."""
        if name in self.registry:
            return True
        async with self._registry_lock:  # concurrent misses share one read
            now = asyncio.get_running_loop().time()
            if name not in self.registry and now - self._registry_read >= REGISTRY_RECHECK:
                with contextlib.suppress(Exception):
                    self.registry = await self.catalog.registry()
                self._registry_read = asyncio.get_running_loop().time()
        return name in self.registry

    @property
    def ready(self) -> bool:
        return self.map is not None and self.map.slots > 0

    def shard_for(self, routing_key: str) -> str:
        if self.map is None or not self.map.owners:
            raise ShardUnavailableError("the router has no slot map yet; retry shortly")
        return self.map.owners[slot_of(routing_key, self.map.slots)]

    def client(self, shard_id: str) -> ShardClient:
        return self.clients[shard_id]

    async def _through_moves(
        self,
        call: Callable[[str, ShardClient], Awaitable[T]],
        first: str,
        then: Callable[[str], Awaitable[str]],
    ) -> T:
        """Run ``call`` on a shard; while its slot is moving ('slot moved' answers), wait
        with backoff, refresh the map and go where ``then`` says: never refuse before
        ``move_wait`` seconds."""
        shard_id, delay, waited = first, 0.005, 0.0
        while True:
            seen = self._refreshes
            try:
                return await call(shard_id, self.client(shard_id))
            except SlotMovedError:
                self.metrics.slot_moved_retries.inc()
                if waited > self.settings.move_wait:
                    raise
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 0.2)
                await self.refresh(force=True, unless_since=seen)
                shard_id = await then(shard_id)

    async def on_shard(
        self, routing_key: str, call: Callable[[str, ShardClient], Awaitable[T]]
    ) -> T:
        """Run ``call`` on the routing key's shard, following its slot if it moves."""

        async def current(_: str) -> str:
            return self.shard_for(routing_key)

        return await self._through_moves(call, self.shard_for(routing_key), current)

    async def on_located(
        self, workflow_id: str, shard_id: str, call: Callable[[str, ShardClient], Awaitable[T]]
    ) -> T:
        """Run ``call`` on the shard holding a workflow, following it if its slot moves."""

        async def holder(previous: str) -> str:
            return await self.locate(workflow_id, None) or previous

        return await self._through_moves(call, shard_id, holder)

    async def locate(self, workflow_id: str, routing_key: str | None) -> str | None:
        """The shard holding the workflow: its hashed shard first, then every other one.
        Found nowhere, it looks again if the slot map changed meanwhile: a router whose map
        predates a shard added and a finished move would otherwise miss a workflow that
        moved there (its old shard has dropped it)."""
        # The version this lookup searched: a refresh by another request while it ran
        # must not pass for "nothing changed".
        searched = None if self.map is None else self.map.version
        found = await self._locate(workflow_id, routing_key)
        if found is None and self.map is not None:
            await self.refresh()
            if self.map.version != searched:
                found = await self._locate(workflow_id, routing_key)
        return found

    async def _locate(self, workflow_id: str, routing_key: str | None) -> str | None:
        first = self.shard_for(routing_key or workflow_id)
        if await self.client(first).locate(workflow_id) is not None:
            return first
        if routing_key is None:
            # Placed by another key: the ID's home shard (first) names it in its directory.
            holder = await self.client(first).directory_holder(workflow_id)
            if holder is not None:
                shard = self.shard_for(holder)
                if await self.client(shard).locate(workflow_id) is not None:
                    return shard
        others = [s for s in self.clients if s != first and self.map and s in self.map.shards]
        found = await asyncio.gather(
            *(self.client(s).locate(workflow_id) for s in others), return_exceptions=True
        )
        for shard_id, status in zip(others, found, strict=True):
            if isinstance(status, str):
                return shard_id
        errors = [e for e in found if isinstance(e, BaseException)]
        if errors:
            raise ShardUnavailableError(
                f"workflow {workflow_id} is not on its shard and a shard is down: {errors[0]}"
            )
        return None
