"""Cron schedules: when the ticks fall, and the workflow ID each tick starts.

Expressions are standard 5-field cron (``*/5 * * * *``), or 6 fields whose last one is
seconds (``* * * * * */10``), evaluated by croniter in the schedule's IANA time zone
(ticks follow the wall clock across daylight-saving changes). Each tick starts exactly
one workflow, whose ID is ``sched:<schedule>:<tick in UTC>``: deterministic, so a tick
fired twice (a failover, a retry) starts it once.

Catch-up: a schedule whose ticks were missed (the cluster was down) fires only the
latest missed tick, once, then continues with the next future one. Overlap: ``skip``
(the default) passes over a tick while the workflow of the previous tick is still
unfinished; ``allow`` starts it regardless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from shardflow.infra.errors import InvalidScheduleError

OVERLAPS = ("skip", "allow")
MAX_NAME = 100


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    cron: str
    timezone: str = "UTC"
    overlap: str = "skip"

    def __post_init__(self) -> None:
        if not isinstance(self.cron, str) or not croniter.is_valid(self.cron):
            raise InvalidScheduleError(
                f"invalid cron expression {self.cron!r}: 5 fields (minute hour day month "
                "weekday), or 6 with seconds last"
            )
        if len(self.cron.split()) not in (5, 6):
            raise InvalidScheduleError(f"a cron expression has 5 or 6 fields, not {self.cron!r}")
        zone(self.timezone)
        if self.overlap not in OVERLAPS:
            raise InvalidScheduleError(
                f"overlap policy must be one of {', '.join(OVERLAPS)}, not {self.overlap!r}"
            )

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``, in UTC."""
        local = moment.astimezone(zone(self.timezone))
        tick: datetime = croniter(self.cron, local).get_next(datetime)
        return tick.astimezone(UTC)

    def due(self, next_tick: datetime, now: datetime) -> datetime | None:
        """The tick to fire now (the latest one at or before ``now``), or None if not due."""
        if next_tick > now:
            return None
        local = now.astimezone(zone(self.timezone))
        latest: datetime = croniter(self.cron, local).get_prev(datetime)
        latest = latest.astimezone(UTC)
        if self.next_after(latest) <= now:  # ``now`` is itself a tick
            latest = self.next_after(latest)
        return max(latest, next_tick)


def zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise InvalidScheduleError("a time zone is an IANA name such as 'UTC' or 'Europe/Paris'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidScheduleError(f"unknown time zone {name!r}") from exc


def check_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or not name
        or len(name) > MAX_NAME
        or any(ord(c) < 33 or ord(c) == 127 for c in name)
    ):
        raise InvalidScheduleError(
            f"a schedule name is 1 to {MAX_NAME} characters without spaces or control characters"
        )
    return name


def workflow_id(schedule: str, tick: datetime) -> str:
    return f"sched:{schedule}:{tick.astimezone(UTC):%Y%m%dT%H%M%SZ}"
