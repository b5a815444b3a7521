"""Plain data passed between the store, the committer and the runtime."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

FINISHED = ("completed", "failed", "cancelled")  # every status a workflow ends in
SUSPENDED = ("sleeping", "waiting")


class Row(Protocol):
    """A row by column name: an asyncpg Record, or a dict decoded from JSON."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class ClaimedWorkflow:
    id: str
    name: str
    version: str
    input: str
    epoch: int
    attempt: int
    next_seq: int
    signal_seq: int
    cancel_requested: bool
    deadline: datetime | None
    created_at: datetime
    routing_key: str = ""
    parent: str | None = None
    priority: int = 0
    traceparent: str | None = None  # W3C trace context of the start (infra/tracing.py)

    @classmethod
    def decode(cls, row: Row) -> ClaimedWorkflow:
        """The one decoding of a claimed workflow, by column name: a row of
        ``claim_workflows`` (a claim, or one riding a flush) or an item of a hand-off
        NOTIFY (a JSON object of the same names; a new start, so no history yet)."""
        return cls(
            id=row["id"],
            name=row["name"],
            version=row["version"],
            input=row["input"],
            epoch=int(row["lease_epoch"]),
            attempt=_fresh(row, "attempt") or 0,
            next_seq=_fresh(row, "next_seq") or 0,
            signal_seq=_fresh(row, "signal_seq") or 0,
            cancel_requested=bool(_fresh(row, "cancel_requested")),
            deadline=_timestamp(row["deadline"]),
            created_at=_timestamp(row["created_at"]) or datetime.fromtimestamp(0),
            routing_key=row["routing_key"] or "",
            parent=row["parent"],
            priority=int(row["priority"] or 0),
            traceparent=_fresh(row, "traceparent"),
        )


def _fresh(row: Row, key: str) -> Any:
    """A column a hand-off leaves out: a new start has none of it yet."""
    try:
        return row[key]
    except KeyError:
        return None


def _timestamp(value: datetime | str | None) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What an executor asks of a claim: up to ``limit`` workflows leased to ``owner`` for
    ``lease`` seconds, of the (name, version) ``kinds`` it has code for (None: any)."""

    owner: str
    limit: int
    lease: float
    kinds: tuple[tuple[str, str], ...] | None = None

    @property
    def names(self) -> list[str] | None:
        return None if self.kinds is None else [name for name, _ in self.kinds]

    @property
    def versions(self) -> list[str] | None:
        return None if self.kinds is None else [version for _, version in self.kinds]


@dataclass(frozen=True, slots=True)
class RecordedStep:
    seq: int
    name: str
    status: str
    output: str | None
    error: str | None
    attempts: int = 1


@dataclass(slots=True)
class StepRow:
    seq: int
    name: str
    status: str
    output: str | None
    error: str | None
    attempts: int
    started_at: datetime | None


@dataclass(frozen=True, slots=True)
class FlushResult:
    applied: bool
    cancel_requested: bool


@dataclass(slots=True)
class WorkflowRecord:
    """The next state of one workflow to group-commit, with its new step rows."""

    id: str
    epoch: int
    next_seq: int
    seen_signal: int
    status: str = "running"
    output: str | None = None
    error: str | None = None
    run_at: datetime | None = None
    parent: str | None = None
    steps: list[StepRow] = field(default_factory=list)
    future: asyncio.Future[FlushResult] | None = None

    @property
    def plain(self) -> bool:
        """Whether flushing this record writes its own rows only: it neither suspends (a
        ready entry to queue) nor finishes a child (a parent to signal)."""
        return self.status not in SUSPENDED and (self.parent is None or self.status not in FINISHED)

    def merge(self, other: WorkflowRecord) -> None:
        self.steps.extend(other.steps)
        self.next_seq = max(self.next_seq, other.next_seq)
        if other.status != "running":
            self.status, self.output, self.error = other.status, other.output, other.error
            self.run_at = other.run_at
            self.parent = other.parent


@dataclass(slots=True)
class History:
    steps: dict[int, RecordedStep] = field(default_factory=dict)
    events: dict[str, list[Any]] = field(default_factory=dict)
