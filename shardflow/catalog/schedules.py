"""Cron schedules as the catalog keeps them: made, declared, listed and deleted on request.

The leading coordinator fires them (``shardflow.coordinator.schedules.Scheduler``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shardflow.catalog.store import Catalog
from shardflow.infra.errors import (
    InvalidScheduleError,
    ScheduleConflictError,
    ScheduleNotFoundError,
)
from shardflow.shard import cron
from shardflow.shard.cron import ScheduleSpec


def _doc(row: asyncpg.Record) -> dict[str, Any]:
    def stamp(value: datetime | None) -> str | None:
        return None if value is None else value.astimezone(UTC).isoformat()

    return {
        "name": row["name"],
        "workflow": row["workflow"],
        "cron": row["cron"],
        "timezone": row["timezone"],
        "overlap": row["overlap"],
        "input": None if row["input"] is None else json.loads(row["input"]),
        "source": row["source"],
        "next_tick": stamp(row["next_tick"]),
        "last_tick": stamp(row["last_tick"]),
        "last_workflow": row["last_workflow"],
        "fired": row["fired"],
        "skipped": row["skipped"],
        "created_at": stamp(row["created_at"]),
    }


async def create(
    catalog: Catalog, name: str, workflow: str, spec: ScheduleSpec, input_json: str | None
) -> dict[str, Any]:
    """A schedule made at run time; ``ScheduleConflictError`` when the name is taken."""
    cron.check_name(name)
    first = spec.next_after(datetime.now(UTC))
    if not await catalog.schedule_create(name, workflow, spec, input_json, first):
        raise ScheduleConflictError(f"a schedule named {name!r} exists; delete it first")
    return await get(catalog, name)


async def declare(catalog: Catalog, name: str, spec: ScheduleSpec) -> None:
    """A schedule declared in code (``@workflow(schedule=...)``): idempotent."""
    first = spec.next_after(datetime.now(UTC))
    await catalog.schedule_declare(name, spec, first)


async def list_all(catalog: Catalog) -> list[dict[str, Any]]:
    return [_doc(r) for r in await catalog.schedule_list()]


def _existing_name(name: str) -> str:
    """A name looked up: one that no schedule can have (a NUL, say) is simply not found."""
    try:
        return cron.check_name(name)
    except InvalidScheduleError:
        raise ScheduleNotFoundError(f"no schedule named {name!r}") from None


async def get(catalog: Catalog, name: str) -> dict[str, Any]:
    row = await catalog.schedule_get(_existing_name(name))
    if row is None:
        raise ScheduleNotFoundError(f"no schedule named {name!r}")
    return _doc(row)


async def delete(catalog: Catalog, name: str) -> None:
    if not await catalog.schedule_delete(_existing_name(name)):
        raise ScheduleNotFoundError(f"no schedule named {name!r}")
