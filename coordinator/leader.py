"""`shardflow coordinator`: one leader (advisory lock + term in the catalog), any standbys.

Only the leader checks shard health, executes slot moves, fires schedules and shares
out limits. A standby polls the lock and takes over within a poll interval of the
leader's session closing. The term is also a lease the leader renews before each round
of work: a leader that stops without dying (SIGSTOP, a hung host whose kernel still
answers keepalives) keeps its session and lock, so a standby that finds the lease run
out ends that session (``pg_terminate_backend``) and takes the next term, within
``leader_lease + poll_interval`` seconds. Every move call checks the term, in the catalog
and on the shards, so the stalled one changes nothing when it wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass

import asyncpg

from shardflow.catalog import admin as operations
from shardflow.catalog.store import Catalog
from shardflow.coordinator.directory import DirectorySweeper
from shardflow.coordinator.health import ShardProbe
from shardflow.coordinator.limits import Limiter
from shardflow.coordinator.moves import Mover, NotLeader
from shardflow.coordinator.schedules import Scheduler
from shardflow.infra import pool as shard_pool
from shardflow.infra.logs import FORMATS
from shardflow.infra.pool import close_connection
from shardflow.infra.settings import Settings, setting
from shardflow.metrics.coordinator import CoordinatorMetrics
from shardflow.metrics.shard_stats import ShardStats
from shardflow.shard.faults import Faults

log = logging.getLogger("shardflow.coordinator")


@dataclass(frozen=True)
class CoordinatorSettings(Settings):
    catalog: str = setting(help="DSN of the cluster catalog (libpq URL; sslmode=... for TLS)")
    name: str = setting("", help="identity shown as leader (default host-pid)")
    poll_interval: float = setting(1.0, help="seconds between leadership attempts", minimum=0.05)
    leader_lease: float = setting(
        3.0,
        help="seconds a leader's term lasts unless renewed; a standby ends a leader stalled "
        "this long and takes over (a few renewals fit in it, each under a round trip)",
        minimum=0.1,
    )
    health_interval: float = setting(
        5.0, help="seconds between shard health checks and cluster metric samples", minimum=0.1
    )
    move_interval: float = setting(
        0.2, help="seconds between looks for planned moves", minimum=0.01
    )
    limit_interval: float = setting(
        1.0, help="seconds between shares of cluster-wide concurrency limits", minimum=0.05
    )
    rollback_after: float = setting(
        10.0,
        help="seconds a move waits for an unreachable target before rolling back",
        minimum=0.1,
    )
    parallel_moves: int = setting(4, help="slot moves run at once", minimum=1)
    move_rows_per_s: float = setting(
        2000.0,
        help="rows copied per second by all moves together, so that moving slots leaves "
        "the shards' disks to the workflows (0: no limit)",
        minimum=0,
    )
    metrics_port: int | None = setting(None, help="port of /metrics (unset: none)", minimum=0)
    metrics_host: str = setting("127.0.0.1", help="address of /metrics")
    log_format: str = setting("logfmt", help="log lines as logfmt or JSON", choices=FORMATS)


class Coordinator:
    def __init__(self, settings: CoordinatorSettings, faults: Faults | None = None) -> None:
        self.settings = settings
        self.name = settings.name or f"{socket.gethostname()}-{os.getpid()}"
        self.faults = faults or Faults()
        self.metrics = CoordinatorMetrics()
        self.is_leader = False
        self.term = 0
        self.leader_event = asyncio.Event()
        self.probe = ShardProbe()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._attempt(stop)
            except Exception as exc:
                log.warning("event=coordinator_error error=%r", exc)
            self._step_down()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.poll_interval)

    def _step_down(self) -> None:
        if self.is_leader:
            log.warning("event=leadership_lost name=%s term=%d", self.name, self.term)
        self.is_leader = False
        self.leader_event.clear()
        self.metrics.is_leader.set(0)

    async def _attempt(self, stop: asyncio.Event) -> None:
        lock = await shard_pool.connect(self.settings.catalog, timeout=5)
        try:
            catalog = await Catalog.connect(self.settings.catalog, pool_size=3)
        except BaseException:
            lock.terminate()
            raise
        try:
            while not stop.is_set():
                if await catalog.leader_try_lock(lock):
                    break
                if await catalog.leader_evict():
                    log.warning("event=leader_evicted reason=lease_expired")
                    await asyncio.sleep(0.05)  # its lock goes with its session
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.poll_interval)
            else:
                return
            self.term = await catalog.leader_take(
                self.name, lock.get_server_pid(), self.settings.leader_lease
            )
            self.is_leader = True
            self.leader_event.set()
            self.metrics.is_leader.set(1)
            self.metrics.term.set(self.term)
            log.info("event=leader name=%s term=%d", self.name, self.term)
            await self._lead(catalog, lock, stop)
        finally:
            await catalog.close()
            await close_connection(lock)

    async def _lead(self, catalog: Catalog, lock: asyncpg.Connection, stop: asyncio.Event) -> None:
        mover = Mover(
            catalog,
            self.term,
            self.faults,
            self.settings.rollback_after,
            self.settings.parallel_moves,
            self.settings.move_rows_per_s,
        )
        scheduler = Scheduler(catalog)
        limiter = Limiter(catalog)
        sweeper = DirectorySweeper(catalog)
        work = asyncio.ensure_future(
            self._lead_with(mover, scheduler, limiter, sweeper, catalog, lock, stop)
        )
        lease = asyncio.ensure_future(self._keep_lease(catalog))
        try:
            await asyncio.wait({work, lease}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, lease):
                task.cancel()
            ended = await asyncio.gather(work, lease, return_exceptions=True)
            self.probe.close()
            await sweeper.close()
            await mover.close()
            await scheduler.close()
            await limiter.close()
        for outcome in ended:  # a failure of either is the caller's to log and retry
            if isinstance(outcome, Exception):
                raise outcome

    async def _lead_with(
        self,
        mover: Mover,
        scheduler: Scheduler,
        limiter: Limiter,
        sweeper: DirectorySweeper,
        catalog: Catalog,
        lock: asyncpg.Connection,
        stop: asyncio.Event,
    ) -> None:
        loop = asyncio.get_running_loop()
        next_health = next_limits = 0.0
        while not stop.is_set():
            if lock.is_closed():
                return
            # Renewed before each round of work too: a leader that was stopped past its
            # lease finds out here, before it acts, that another took over.
            if not await catalog.leader_renew(self.term, self.settings.leader_lease):
                log.warning("event=lease_lost name=%s term=%d", self.name, self.term)
                return
            if loop.time() >= next_health:
                await self._check_health(catalog)
                await mover.clean_rolled_back()
                await sweeper.sweep()
                next_health = loop.time() + self.settings.health_interval
            try:
                done = await mover.run_all()
            except NotLeader as exc:
                log.warning("event=not_leader %s", exc)
                return
            if done:
                self.metrics.moves_done.inc(done)
                for pause in mover.pauses_ms:
                    self.metrics.move_pause.observe(pause / 1000)
                mover.pauses_ms.clear()
            if loop.time() >= next_limits:
                try:
                    await limiter.share_out()
                except (OSError, asyncpg.PostgresError) as exc:  # a shard away: next round
                    log.warning("event=limit_share_failed error=%r", exc)
                next_limits = loop.time() + self.settings.limit_interval
            fired, skipped = scheduler.fired, scheduler.skipped
            if await scheduler.fire_due():
                self.metrics.schedule_ticks.labels("fired").inc(scheduler.fired - fired)
                self.metrics.schedule_ticks.labels("skipped").inc(scheduler.skipped - skipped)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.move_interval)

    async def _keep_lease(self, catalog: Catalog) -> None:
        """Renew the term's lease three times per lease while the leader works, however
        long one round of work takes (a move waiting out a shard's outage); returns when
        another term took over."""
        while True:
            if not await catalog.leader_renew(self.term, self.settings.leader_lease):
                break
            await asyncio.sleep(self.settings.leader_lease / 3)
        log.warning("event=lease_lost name=%s term=%d", self.name, self.term)

    def _export(self, shard_id: str, stats: ShardStats) -> None:
        m = self.metrics
        for status in ("pending", "running", "sleeping", "waiting"):
            m.queue_depth.labels(shard_id, status).set(stats.queue.get(status, 0))
        m.queue_depth.labels(shard_id, "ready").set(stats.ready_now)
        m.oldest_ready.labels(shard_id).set(stats.oldest_ready_s)
        for locktype in ("relation", "tuple", "transactionid", "advisory"):
            m.lock_waits.labels(shard_id, locktype).set(stats.lock_waits.get(locktype, 0))
        m.longest_lock_wait.labels(shard_id).set(stats.longest_lock_wait_s)
        m.server_counters.deadlocks[shard_id] = stats.deadlocks
        for table in ("workflows", "steps", "ready", "events"):
            m.dead_tuples.labels(shard_id, table).set(stats.dead_tuples.get(table, 0))
        m.oldest_xact.labels(shard_id).set(stats.oldest_transaction_s)

    async def _check_health(self, catalog: Catalog) -> None:
        status = await operations.status(catalog)
        for shard in status["shards"]:
            self.metrics.slots.labels(shard["id"]).set(shard["slots"])
        self.metrics.moves_in_progress.set(len(status["moves"]))
        shards = await catalog.shards()
        self.probe.forget_others(shard.dsn for shard in shards)
        for shard in shards:
            healthy = True
            try:
                self._export(shard.id, await self.probe.sample(shard.dsn))
            except Exception:
                healthy = False
            self.metrics.shard_up.labels(shard.id).set(1 if healthy else 0)
            if not healthy and shard.state == "active":
                await catalog.shard_set_state(shard.id, "down")
                log.warning("event=shard_down shard=%s", shard.id)
            elif healthy and shard.state == "down":
                await catalog.shard_set_state(shard.id, "active")
                log.info("event=shard_up shard=%s", shard.id)
            else:
                await catalog.shard_checked(shard.id)
