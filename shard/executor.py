"""The executor: claims runnable workflows of one shard and runs many at once.

Liveness: a session advisory lock (``lock_key``) held on a dedicated connection,
so peers know at once when this process is gone, plus a lease renewed by the
heartbeat for when it is alive but stalled. Every write is fenced on the lease
epoch, so a late write after either is rejected, never applied.

Hand-off: while it has room, an executor keeps ``handoff_until`` a moment ahead in its
row, with how much room it has, and a start leases new workflows of its kinds to it
directly (to one of the open executors, at random in proportion to their room) and names
them in a NOTIFY on the executor's own channel (shardflow.start_workflows): the workflow
runs without a claim's round trip and commit. One it cannot take goes back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from shardflow.infra import logs, placement
from shardflow.infra import pool as shard_pool
from shardflow.infra.dbfaults import is_unavailable
from shardflow.infra.errors import SettingsError, ShardflowError
from shardflow.infra.pool import create_pool
from shardflow.metrics.shard import ShardMetrics
from shardflow.shard.committer import GroupCommitter
from shardflow.shard.executor_settings import ExecutorSettings
from shardflow.shard.faults import Faults
from shardflow.shard.migrate import migrations
from shardflow.shard.model import ClaimedWorkflow, ClaimRequest, History
from shardflow.shard.queries import query
from shardflow.shard.runner import WorkflowRunner
from shardflow.shard.sdk import Registry
from shardflow.shard.sqlflow import make_workflow
from shardflow.shard.store import ShardStore

log = logging.getLogger("shardflow.executor")
GC_LOCK_KEY = 7358201947
# Seconds a statement may run before it is cancelled, on the pool and on the liveness
# connection alike (small checkpoint flushes run there: ShardStore.listener).
COMMAND_TIMEOUT = 60.0
# Hand-offs: renewed every HANDOFF_RENEW s for HANDOFF_AHEAD s (a stalled executor stops
# getting them within that), while fewer than HANDOFF_ROOM of its concurrency are in use.
HANDOFF_RENEW = 0.5
HANDOFF_AHEAD = 2.0
HANDOFF_ROOM = 0.75
# Every HANDOFF_SWEEP s, workflows leased to us, untouched for HANDOFF_LOST s and not in
# memory (their NOTIFY never came) go back to the queue: a lost hand-off costs seconds.
HANDOFF_SWEEP = 5.0
HANDOFF_LOST = 5.0


class Executor:
    def __init__(
        self,
        settings: ExecutorSettings,
        registry: Registry,
        *,
        faults: Faults | None = None,
        metrics: ShardMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.faults = faults or Faults()
        self.metrics = metrics or ShardMetrics(settings.shard)
        self.owner = ""
        self.lock_key = 0
        self._new_identity()
        self._pool: asyncpg.Pool | None = None
        self._lock_conn: asyncpg.Connection | None = None
        self._placement = placement.Follower(settings.dsn)  # on Citus: our schema's node
        self._retiring: set[asyncio.Task[None]] = set()
        self._inflight: dict[str, tuple[asyncio.Task[None], int]] = {}
        self._release: list[tuple[str, int]] = []
        self._wake = asyncio.Event()
        self._capacity = asyncio.Event()
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self.runner: WorkflowRunner | None = None
        self._foreign_kinds = False
        self._bad_sql: set[tuple[str, str]] = set()
        self._handoff_at: float | None = None  # when hand-offs were last renewed (None: off)
        self._swept_at = time.monotonic()
        self._handoff_tasks: set[asyncio.Task[None]] = set()

    def _new_identity(self) -> None:
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.lock_key = secrets.randbits(62)

    @property
    def kinds(self) -> list[tuple[str, str]]:
        """The (name, version) pairs this executor has code for: all it ever claims."""
        return list(self.registry.versions)

    async def _refresh_kinds(self) -> None:
        """One look at the shard's registry: load the SQL-defined workflows (every version)
        it names and we lack, then claim only our own kinds once it names any we still
        lack (another release registered it). Until then the cheaper claim takes any."""
        registered = await self.store.registry_kinds()
        if registered - set(self.registry.versions) - self._bad_sql:
            known = [*self.registry.versions, *self._bad_sql]
            for name, version, definition in await self.store.sql_workflows(known):
                try:
                    self.registry.add_version(make_workflow(name, version, definition))
                except (KeyError, TypeError, ValueError, ShardflowError) as exc:
                    self._bad_sql.add((name, version))
                    log.warning("event=sql_workflow_invalid name=%s error=%r", name, exc)
        self._foreign_kinds = self._foreign_kinds or bool(registered - set(self.kinds))

    @property
    def store(self) -> ShardStore:
        assert self.runner is not None, "executor not started"
        return self.runner.store

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.shutdown()

    async def start(self) -> None:
        s = self.settings
        delay = 0.1
        while True:
            try:
                self._pool = await create_pool(
                    await self._placement.resolve(),
                    min_size=2,
                    max_size=s.pool_size,
                    command_timeout=COMMAND_TIMEOUT,
                )
                break
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                log.warning("event=connect_failed retry_in=%.1f error=%r", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        await self._check_schema()
        logs.bind(shard=s.shard)  # on every line of this executor's tasks from here on
        store = ShardStore(self._pool)
        store.citus = await placement.on_citus(self._pool)
        committer = GroupCommitter(store, self.faults, self.metrics)
        self.runner = WorkflowRunner(
            store,
            committer,
            self.registry,
            self.faults,
            self.metrics,
            s.max_recovery_attempts,
        )
        await self._attach()
        await store.registry_add(
            [(w.name, w.version, w.timeout) for w in self.registry.workflows.values()]
        )
        await store.limits_set(list(self.registry.workflows.values()))
        await self._refresh_kinds()
        await self._offer_handoffs()
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="claim"),
            asyncio.create_task(self._maintenance_loop(), name="maintenance"),
            asyncio.create_task(self._gc_loop(), name="gc"),
        ]
        log.info(
            "event=executor_started owner=%s shard=%s workflows=%s",
            self.owner,
            s.shard,
            ",".join(sorted(self.registry.workflows)),
        )

    async def _check_schema(self) -> None:
        """Refuse a shard whose schema is newer than this code understands, or older than
        it needs (its statements would fail on the first missing column)."""
        assert self._pool is not None
        known = max(m.version for m in migrations())
        found = int(await self._pool.fetchval(query("schema_version")))
        if found > known:
            raise SettingsError(
                f"the shard's schema is at version {found} but this executor knows up to "
                f"{known}: upgrade Shardflow on this host before starting it",
                setting="dsn",
            )
        if found < known:
            raise SettingsError(
                f"the shard's schema is at version {found} but this executor needs {known}: "
                "run `shardflow cluster migrate` (or `shardflow migrate --dsn` for this shard)",
                setting="dsn",
            )

    async def _attach(self) -> None:
        """Open the liveness connection: advisory lock, registration, LISTEN (and the
        checkpoint flushes: ShardStore.listener)."""
        conn, lock_server = await self._lock(self._placement.node)
        try:
            await self.store.executor_register(
                self.owner, self.lock_key, self.settings.lease_seconds, lock_server
            )
            await self.faults.point("executor_registered")
        except BaseException:
            conn.terminate()  # the shard went away halfway: the next attempt starts over
            raise
        self._lock_conn = conn
        self.store.listener = conn
        self._handoff_at = None

    async def _lock(self, dsn: str) -> tuple[asyncpg.Connection, str]:
        """A liveness connection to ``dsn``: our advisory lock held, our channels listened
        to. Returns it with the name of the server holding the lock."""
        conn = await shard_pool.connect(dsn, command_timeout=COMMAND_TIMEOUT)
        try:
            lock_server = str(await conn.fetchval(query("executor_lock"), self.lock_key))
            await conn.add_listener("shardflow_ready", self._on_notify)
            await conn.add_listener(f"shardflow_handoff_{self.lock_key}", self._on_handoff)
        except BaseException:
            conn.terminate()
            raise
        return conn, lock_server

    async def _follow_schema(self) -> None:
        """On Citus, move to the node now holding our schema (shardflow/infra/placement.py):
        lock and listen there first, then tell peers where our lock is, then move the pool.
        Nothing in flight stops: a statement on the old node is still routed by Citus."""
        if self._pool is None:
            return
        target = await self._placement.moved(self._pool)
        if target is None:
            return
        log.info("event=schema_moved owner=%s to=%s", self.owner, urlsplit(target).netloc)
        conn, lock_server = await self._lock(target)
        old, self._lock_conn = self._lock_conn, conn
        self.store.listener = conn
        self._placement.node = target
        await shard_pool.repoint(self._pool, target)
        shard_pool.retire(old, self._retiring)  # a flush may still run on it
        if not await self.store.executor_relock(self.owner, lock_server):
            await self._reattach("declared dead by a peer while following the schema")

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    def _on_handoff(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        """Workflows a start leased to us, by NOTIFY (a JSON array of hand-off items)."""
        self.take(json.loads(str(payload)))

    def take(self, items: list[dict[str, Any]]) -> None:
        """Workflows a start leased to us (the columns of a claim, a JSON object each): by
        NOTIFY, or from the start's own answer when this process made it (the fast path).
        Those we cannot run now go back to the queue."""
        taken: list[ClaimedWorkflow] = []
        for item in items:
            c = ClaimedWorkflow.decode(item)
            if c.id in self._inflight:
                continue
            if (
                self._stopping
                or len(self._inflight) + len(taken) >= self.settings.concurrency
                or (c.name, c.version) not in self.registry.versions
            ):
                self.metrics.handoffs.labels(self.metrics.shard, "released").inc()
                self._release.append((c.id, c.epoch))
                continue
            self.metrics.handoffs.labels(self.metrics.shard, "taken").inc()
            taken.append(c)
        if taken:
            task = asyncio.create_task(self._launch(taken))
            self._handoff_tasks.add(task)
            task.add_done_callback(self._handoff_tasks.discard)

    async def _offer_handoffs(self) -> None:
        """Keep our row open to hand-offs while we have room; close it when we have none."""
        s = self.settings
        now = time.monotonic()
        room = (
            0 if self._stopping else math.ceil(s.concurrency * HANDOFF_ROOM) - len(self._inflight)
        )
        if s.handoff and room > 0:
            if self._handoff_at is None or now - self._handoff_at >= HANDOFF_RENEW:
                kinds = [f"{name}@{version}" for name, version in self.kinds]
                await self.store.executor_handoff(self.owner, kinds, HANDOFF_AHEAD, room)
                self._handoff_at = now
        elif self._handoff_at is not None:
            self._handoff_at = None
            await self.store.executor_handoff(self.owner, [], 0)

    async def _sweep_lost_handoffs(self) -> None:
        """Every HANDOFF_SWEEP s: give back the workflows leased to us that we do not hold."""
        now = time.monotonic()
        if now - self._swept_at < HANDOFF_SWEEP:
            return
        self._swept_at = now
        lost = [
            (wid, epoch)
            for wid, epoch in await self.store.workflows_leased_to(self.owner, HANDOFF_LOST)
            if wid not in self._inflight
        ]
        if lost:
            log.warning("event=handoff_lost workflows=%d", len(lost))
            self.metrics.handoffs.labels(self.metrics.shard, "lost").inc(len(lost))
            self._release.extend(lost)

    async def shutdown(self) -> None:
        """Stop claiming, let running workflows finish up to the grace period, release the rest."""
        self._stopping = True
        self._wake.set()
        self._capacity.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self.runner is not None:
            with contextlib.suppress(Exception):  # no more hand-offs (any still coming: released)
                await self._offer_handoffs()
        await asyncio.gather(*self._handoff_tasks, return_exceptions=True)
        running = [task for task, _ in self._inflight.values()]
        if running:
            await asyncio.wait(running, timeout=self.settings.shutdown_grace)
        for task, _ in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self.runner is not None:
            try:
                await self.runner.committer.drain()
                self._release.extend((c.id, c.epoch) for c in self.runner.committer.orphans)
                await self._release_lost()
                await self.store.executor_unregister(self.owner)
            except Exception as exc:
                log.warning("event=shutdown_incomplete error=%r", exc)
        for task in self._retiring:
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await shard_pool.close_connection(self._lock_conn)
        await shard_pool.close_pool(self._pool)
        log.info("event=executor_stopped owner=%s", self.owner)

    # -- claiming ---------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        assert self.runner is not None  # made before the loops start
        s = self.settings
        delay = 0.05
        while not self._stopping:
            free = s.concurrency - len(self._inflight)
            if free <= 0:
                self._capacity.clear()
                await self._capacity.wait()
                continue
            limit = min(free, s.claim_batch)
            self._wake.clear()
            started = time.perf_counter()
            try:
                if self.runner.foreign_seen:
                    self._foreign_kinds = True
                request = ClaimRequest(
                    self.owner,
                    limit,
                    s.lease_seconds,
                    tuple(self.kinds) if self._foreign_kinds else None,
                )
                claimed = await self.runner.committer.claim(request)
            except Exception as exc:
                log.warning("event=claim_failed retry_in=%.2f error=%r", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05
            self.metrics.claim_seconds.observe(time.perf_counter() - started)
            self.metrics.claim_batch_size.observe(len(claimed))
            if claimed:
                await self._launch(claimed)
            if len(claimed) < limit:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), s.poll_interval)

    async def _launch(self, claimed: list[ClaimedWorkflow]) -> None:
        try:
            histories = await self.store.history_for(claimed)
        except Exception as exc:
            log.warning("event=history_failed count=%d error=%r", len(claimed), exc)
            self._release.extend((c.id, c.epoch) for c in claimed)
            return
        await self.faults.point("after_claim")
        for c in claimed:
            task = asyncio.create_task(self._execute(c, histories[c.id]))
            self._inflight[c.id] = (task, c.epoch)
        self.metrics.inflight.set(len(self._inflight))

    async def _execute(self, claimed: ClaimedWorkflow, history: History) -> None:
        assert self.runner is not None
        try:
            if not await self.runner.execute(claimed, history):
                self._release.append((claimed.id, claimed.epoch))
        except asyncio.CancelledError:
            self._release.append((claimed.id, claimed.epoch))
            raise
        except Exception:
            log.exception("event=runner_error workflow=%s", claimed.id)
            self._release.append((claimed.id, claimed.epoch))
        finally:
            entry = self._inflight.get(claimed.id)
            if entry is not None and entry[1] == claimed.epoch:
                del self._inflight[claimed.id]
            self.metrics.inflight.set(len(self._inflight))
            self._capacity.set()

    # -- maintenance ------------------------------------------------------------------------
    async def _maintenance_loop(self) -> None:
        s = self.settings
        last_beat = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(s.maintenance_interval)
            try:
                if self._lock_conn is None or self._lock_conn.is_closed():
                    await self._reattach("liveness connection lost")
                    last_beat = time.monotonic()
                if time.monotonic() - last_beat >= s.lease_seconds / 3:
                    if not await self.store.executor_heartbeat(self.owner, s.lease_seconds):
                        await self._reattach("declared dead by a peer (lease expired)")
                    last_beat = time.monotonic()
                await self._follow_schema()
                await self._refresh_kinds()
                await self._offer_handoffs()
                await self._sweep_lost_handoffs()
                reclaimed = await self.store.reclaim_dead(self.owner, s.max_recovery_attempts)
                if reclaimed:
                    self.metrics.reclaimed.inc(reclaimed)
                    log.info("event=reclaimed workflows=%d", reclaimed)
                await self._release_lost()
            except Exception as exc:
                log.warning("event=maintenance_failed error=%r", exc)

    async def _reattach(self, reason: str) -> None:
        """Our identity is gone: drop every workflow in memory, come back as a new owner."""
        log.warning(
            "event=reattach owner=%s reason=%r inflight=%d", self.owner, reason, len(self._inflight)
        )
        for task, _ in list(self._inflight.values()):
            task.cancel()
        self.store.listener = None
        conn, self._lock_conn = self._lock_conn, None
        await shard_pool.close_connection(conn)
        self._new_identity()
        await self._attach()

    async def _release_lost(self) -> None:
        if not self._release:
            return
        items, self._release = self._release, []
        try:
            count = await self.store.workflow_release_many(items)
            log.info("event=released requested=%d released=%d", len(items), count)
        except Exception:
            self._release.extend(items)
            raise

    async def _gc_loop(self) -> None:
        s = self.settings
        while not self._stopping:
            try:
                await self.collect_garbage()
            except Exception as exc:
                log.warning("event=gc_failed error=%r", exc)
            await asyncio.sleep(s.gc_interval)

    async def collect_garbage(self) -> int:
        """One GC run: batches of finished workflows past retention, each its own transaction."""
        s = self.settings
        started = time.perf_counter()
        removed = 0
        while True:
            count = await self.store.gc_delete_batch(s.gc_retention, s.gc_batch, GC_LOCK_KEY)
            if count is None:
                break
            removed += count
            if count < s.gc_batch:
                break
            await asyncio.sleep(0)
        self.metrics.gc_rows.inc(removed)
        self.metrics.gc_last_run.set_to_current_time()
        self.metrics.gc_seconds.observe(time.perf_counter() - started)
        if removed:
            log.info("event=gc removed=%d seconds=%.3f", removed, time.perf_counter() - started)
        return removed
