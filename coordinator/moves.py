"""Slot moves A -> B: a persisted, resumable state machine in the catalog.

planned --pre-copy finished rows (slot still served)--> precopied
        --fence on A (slot 'moving', live rows' lease epochs bumped)--> fenced
        --copy live rows to B in one transaction, slot 'incoming' on B--> copied
        --B owns the slot; the catalog flips it (new epoch, new map version)--> flipped
        --A deletes its copy--> done

Every step is idempotent: a copy is applied on B once per (move, phase), fencing and
ownership only ever raise epochs, and catalog transitions check the leader's term,
so a resumed move (after a crash of the coordinator, A or B) never loses or doubles
a row. A target that stays unreachable before the copy lands rolls the move back:
A serves the slot again and B's incomplete copy is dropped when B returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg

from shardflow.catalog.store import Catalog
from shardflow.infra.dbfaults import is_unavailable
from shardflow.infra.pool import ShardPools
from shardflow.shard.admin import ShardAdmin, StaleTermError
from shardflow.shard.faults import Faults

T = TypeVar("T")


class GaveUp(Exception):
    """A shard stayed unreachable for longer than a step may wait."""


log = logging.getLogger("shardflow.moves")


class RowRate:
    """A budget of rows copied per second, shared by the moves under way: a move that
    copied n rows waits until the budget has paid for them (0: no limit).

    Copying competes with the workflows for the shards' disk: on a small machine moving
    slots flat out halved throughput while the CPU sat idle (every commit waited longer
    on a WAL flush), where paced moves kept it near the grown cluster's figure.
    """

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self._paid_until = time.monotonic()

    async def spend(self, rows: int) -> None:
        if self.per_second <= 0 or rows <= 0:
            return
        now = time.monotonic()
        self._paid_until = max(self._paid_until, now) + rows / self.per_second
        await asyncio.sleep(self._paid_until - now)


class NotLeader(Exception):
    """The leader's term moved on: this process must stop acting."""


@dataclass
class MoveRow:
    id: int
    slot: int
    source: str
    target: str
    phase: str
    epoch: int | None
    precopy_before: datetime | None
    fenced_at: datetime | None


class Mover:
    def __init__(
        self,
        catalog: Catalog,
        term: int,
        faults: Faults | None = None,
        rollback_after: float = 10.0,
        parallel: int = 1,
        rows_per_second: float = 0.0,
    ) -> None:
        self.catalog = catalog
        self.term = term
        self.faults = faults or Faults()
        self.rollback_after = rollback_after
        self.parallel = parallel
        self.rate = RowRate(rows_per_second)
        self.pauses_ms: list[float] = []
        self._pools = ShardPools(timeout=5, size=parallel + 1)
        self._dsns: dict[str, str] = {}

    async def live_moves(self) -> list[MoveRow]:
        rows = await self.catalog.moves_live()
        return [
            MoveRow(
                r["id"],
                r["slot"],
                r["source"],
                r["target"],
                r["phase"],
                r["epoch"],
                r["precopy_before"],
                r["fenced_at"],
            )
            for r in rows
        ]

    async def run_all(self, on_progress: Any = None) -> int:
        """Execute (or resume) every unfinished move, ``parallel`` at once (each its own
        slot, so they never touch the same rows); returns how many. A move spends most of
        its time waiting on round trips and commits, so a few at once move slots several
        times faster for little more work; the first failure cancels the others, which
        resume where they stood, like after a crash."""
        moves = await self.live_moves()
        gate = asyncio.Semaphore(self.parallel)
        done = 0

        async def one(move: MoveRow) -> None:
            nonlocal done
            async with gate:
                await self.run(move)
            done += 1
            if on_progress is not None:
                on_progress(done)

        try:
            async with asyncio.TaskGroup() as group:
                for move in moves:
                    group.create_task(one(move))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return done

    async def _advance(self, move: MoveRow, to: str, **fields: Any) -> None:
        if not await self.catalog.move_advance(move.id, move.phase, to, self.term, fields):
            raise NotLeader(f"move {move.id}: term {self.term} is no longer the leader's")
        move.phase = to
        await self.faults.point(f"move_{to}")

    async def _dsn(self, shard_id: str) -> str:
        """The shard's DSN, read from the catalog once and again after an outage (a
        restarted local server may come back on another port)."""
        if shard_id not in self._dsns:
            self._dsns = {s.id: s.dsn for s in await self.catalog.shards()}
        return self._dsns[shard_id]

    async def _pool(self, shard_id: str) -> asyncpg.Pool:
        return await self._pools.get(await self._dsn(shard_id))

    async def close(self) -> None:
        await self._pools.close()

    async def _on(self, shard_id: str, call: Callable[[ShardAdmin], Awaitable[T]]) -> T:
        try:
            return await call(ShardAdmin(await self._pool(shard_id)))
        except StaleTermError as exc:
            raise NotLeader(f"shard {shard_id}: {exc}") from None

    async def _retrying(
        self,
        move: MoveRow,
        what: str,
        shard_id: str,
        call: Callable[[ShardAdmin], Awaitable[T]],
        give_up: float | None = None,
    ) -> T:
        """Run on a shard, waiting out its outages; GaveUp after ``give_up`` seconds."""
        started = time.monotonic()
        delay = 0.1
        while True:
            try:
                return await self._on(shard_id, call)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                self._dsns.pop(shard_id, None)
                await self.catalog.move_note_error(
                    move.id, f"{what}: {shard_id} unavailable: {exc!r}"
                )
                log.warning(
                    "event=move_wait move=%d slot=%d step=%s shard=%s error=%r",
                    move.id,
                    move.slot,
                    what,
                    shard_id,
                    exc,
                )
                if give_up is not None and time.monotonic() - started > give_up:
                    raise GaveUp(what) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def run(self, move: MoveRow) -> None:
        live_rows = 0
        term = self.term
        if move.phase != "planned":
            # Taken over from another leader: both shards hear this term before anything
            # else is done, so calls of a stalled predecessor that wakes up are refused.
            for shard_id in (move.source, move.target):
                await self._retrying(move, "term", shard_id, lambda s: s.leader_term(term))
        log.info(
            "event=move_start move=%d slot=%d %s->%s phase=%s",
            move.id,
            move.slot,
            move.source,
            move.target,
            move.phase,
        )
        if move.phase == "planned":
            before, data = await self._precopy_export(move)
            try:
                rows = await self._retrying(
                    move,
                    "precopy import",
                    move.target,
                    lambda shard: shard.slot_import(move.id, "precopy", move.slot, 0, data, term),
                    give_up=self.rollback_after,
                )
            except GaveUp:
                await self._roll_back(move)  # nothing fenced yet: the source serves on
                return
            await self._advance(move, "precopied", precopy_before=before, rows=max(0, rows))
            move.precopy_before = before
            await self.rate.spend(rows)  # the slot is still served: waiting costs nothing
        if move.phase == "precopied":
            epoch = await self.catalog.slot_epoch(move.slot) + 1
            await self._retrying(
                move, "fence", move.source, lambda shard: shard.slot_fence(move.slot, epoch, term)
            )
            await self._advance(move, "fenced", epoch=epoch, fenced_at=datetime.now(UTC))
            move.epoch = epoch
            move.fenced_at = datetime.now(UTC)
        if move.phase == "fenced":
            assert move.epoch is not None and move.precopy_before is not None
            epoch, before = move.epoch, move.precopy_before
            data = await self._retrying(
                move,
                "export",
                move.source,
                lambda shard: shard.slot_export(move.slot, before, False),
            )
            try:
                rows = await self._retrying(
                    move,
                    "copy",
                    move.target,
                    lambda shard: shard.slot_import(move.id, "live", move.slot, epoch, data, term),
                    give_up=self.rollback_after,
                )
            except GaveUp:
                await self._roll_back(move)
                return
            await self._advance(move, "copied", rows=max(0, rows))
            live_rows = rows
        if move.phase == "copied":
            assert move.epoch is not None
            epoch = move.epoch
            await self._retrying(
                move,
                "own",
                move.target,
                lambda shard: shard.slot_own(move.slot, epoch, "incoming", term),
            )
            flipped = await self.catalog.slot_flip(
                move.slot, move.target, move.source, move.epoch, self.term
            )
            log.info("event=slot_flipped move=%d slot=%d now=%s", move.id, move.slot, flipped)
            pause = None
            if move.fenced_at is not None:
                pause = (datetime.now(UTC) - move.fenced_at).total_seconds() * 1000
                self.pauses_ms.append(pause)
            await self._advance(move, "flipped", pause_ms=pause)
        if move.phase == "flipped":
            await self._retrying(
                move, "drop", move.source, lambda shard: shard.slot_drop(move.slot, term)
            )
            await self._advance(move, "done")
            await self.rate.spend(live_rows)  # paid once the pause is over
        log.info("event=move_done move=%d slot=%d phase=%s", move.id, move.slot, move.phase)

    async def _precopy_export(self, move: MoveRow) -> tuple[datetime, str]:
        """Finished rows of the slot, cut at a horizon no still-open transaction predates
        (a workflow finishing concurrently goes to the live copy instead). The horizon is
        read before the export's snapshot is taken, never in it (see slot_precopy_horizon)."""
        while True:
            try:
                async with (await self._pool(move.source)).acquire() as conn:
                    shard = ShardAdmin(conn)
                    horizon = await shard.slot_precopy_horizon()
                    before = await self.catalog.move_set_horizon(move.id, horizon)
                    async with conn.transaction(isolation="repeatable_read", readonly=True):
                        data = await shard.slot_export(move.slot, before, True)
                    return before, data
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                self._dsns.pop(move.source, None)
                log.warning("event=move_wait move=%d step=precopy error=%r", move.id, exc)
                await asyncio.sleep(0.5)

    async def _roll_back(self, move: MoveRow) -> None:
        """The target stayed down before the copy landed: A serves the slot again."""
        await self._advance(move, "rolled_back", error="target unreachable: rolled back")
        if move.epoch is None:  # rolled back before the fence: the source never stopped
            log.warning("event=move_rolled_back move=%d slot=%d", move.id, move.slot)
            return
        epoch, term = move.epoch, self.term
        await self._retrying(
            move,
            "unfence",
            move.source,
            lambda shard: shard.slot_own(move.slot, epoch + 1, "moving", term),
        )
        log.warning("event=move_rolled_back move=%d slot=%d", move.id, move.slot)

    async def clean_rolled_back(self) -> None:
        """Drop copies left 'incoming' on shards by rolled-back moves (once reachable)."""
        rows = await self.catalog.moves_recent(200)
        rolled = {(r["target"], r["slot"]) for r in rows if r["phase"] == "rolled_back"}
        live = {(m.target, m.slot) for m in await self.live_moves()}
        for shard_id, slot in rolled - live:
            try:
                incoming = await self._incoming(shard_id)
                if slot in incoming:
                    await ShardAdmin(await self._pool(shard_id)).slot_drop(slot, self.term)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                self._dsns.pop(shard_id, None)

    async def _incoming(self, shard_id: str) -> set[int]:
        return await ShardAdmin(await self._pool(shard_id)).slots_incoming()
