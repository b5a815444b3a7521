"""Plain data passed between the store, the committer and the runtime."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FINISHED = ("completed", "failed", "cancelled")  # every status a workflow ends in
SUSPENDED = ("sleeping", "waiting")


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
