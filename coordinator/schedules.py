"""Cron schedules in the catalog, and the scheduler the leading coordinator runs.

``Scheduler.fire_due`` takes the schedules whose next tick has come, and for each one
starts the tick's workflow on the shard that owns its ID (``shard.cron.workflow_id``: the
same ID for the same tick, so a tick fired twice starts one workflow), then moves the
schedule past the tick with a compare-and-set. A leader that dies between the two leaves
the tick due; its successor fires it again and finds the workflow already there.
"""

from __future__ import annotations

import json
import logging

import asyncpg

from shardflow.catalog.store import Catalog, SlotMap
from shardflow.infra.errors import (
    ShardflowError,
)
from shardflow.infra.pool import ShardPools
from shardflow.shard import cron
from shardflow.shard.admin import ShardAdmin
from shardflow.shard.client import StartRequest, start_many_on
from shardflow.shard.cron import ScheduleSpec
from shardflow.shard.model import FINISHED
from shardflow.shard.slots import slot_of

log = logging.getLogger("shardflow.coordinator")


DUE_BATCH = 100


class Scheduler:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._pools = ShardPools(timeout=10)
        self.fired = 0
        self.skipped = 0

    async def close(self) -> None:
        await self._pools.close()

    async def _pool(self, slot_map: SlotMap, workflow_id: str) -> asyncpg.Pool:
        owner = slot_map.owners[slot_of(workflow_id, slot_map.slots)]
        return await self._pools.get(slot_map.shards[owner].dsn)

    async def fire_due(self) -> int:
        """Fire every due schedule once; how many ticks were handled (fired or skipped)."""
        due = await self.catalog.schedules_due(DUE_BATCH)
        if not due:
            return 0
        slot_map = await self.catalog.slot_map()
        handled = 0
        for row in due:
            try:
                handled += await self._fire(row, slot_map)
            except ShardflowError as exc:  # a shard down, a slot moving: the tick stays due
                log.warning("event=schedule_retry schedule=%s error=%s", row["name"], exc.message)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("event=schedule_retry schedule=%s error=%r", row["name"], exc)
        return handled

    async def _fire(self, row: asyncpg.Record, slot_map: SlotMap) -> int:
        spec = ScheduleSpec(row["cron"], row["timezone"], row["overlap"])
        tick = spec.due(row["next_tick"], row["now"])
        if tick is None:
            return 0
        name = row["name"]
        started: str | None = None
        if spec.overlap == "allow" or not await self._still_running(slot_map, row["last_workflow"]):
            wid = cron.workflow_id(name, tick)
            payload = (
                json.loads(row["input"])
                if row["input"] is not None
                else {"schedule": name, "scheduled_at": tick.isoformat()}
            )
            pool = await self._pool(slot_map, wid)
            await start_many_on(pool, [StartRequest(row["workflow"], payload, id=wid)])
            started = wid
        advanced = await self.catalog.schedule_advance(
            name, row["next_tick"], spec.next_after(tick), tick, started
        )
        if not advanced:
            return 0  # another coordinator moved it first: its workflow is ours too
        if started is None:
            self.skipped += 1
            log.info("event=schedule_skipped schedule=%s tick=%s", name, tick.isoformat())
        else:
            self.fired += 1
            log.info("event=schedule_fired schedule=%s workflow=%s", name, started)
        return 1

    async def _still_running(self, slot_map: SlotMap, workflow_id: str | None) -> bool:
        if workflow_id is None:
            return False
        pool = await self._pool(slot_map, workflow_id)
        status = await ShardAdmin(pool).workflow_state(workflow_id)
        return status is not None and status not in FINISHED
