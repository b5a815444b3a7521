"""Runs one claimed workflow instance and writes its outcome through the group committer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from shardflow.infra import logs, tracing
from shardflow.infra.dbfaults import is_unavailable
from shardflow.infra.errors import (
    NonDeterminismError,
    RecoveryLimitExceeded,
    ShardUnavailableError,
    WorkflowConflictError,
    WorkflowTimeoutError,
)
from shardflow.metrics.shard import ShardMetrics
from shardflow.shard import codec
from shardflow.shard.client import StartRequest, start_many_on
from shardflow.shard.committer import GroupCommitter
from shardflow.shard.faults import Faults
from shardflow.shard.model import (
    FINISHED,
    ClaimedWorkflow,
    FlushResult,
    History,
    StepRow,
    WorkflowRecord,
)
from shardflow.shard.queries import query
from shardflow.shard.runtime import (
    Context,
    Fenced,
    Lost,
    StepProbe,
    Suspend,
    WorkflowCancelled,
    WorkflowRun,
    error_record,
    with_timeout,
)
from shardflow.shard.sdk import AnyStep, AnyWorkflow, Registry
from shardflow.shard.store import ShardStore

log = logging.getLogger("shardflow.runner")


class _Probe:
    """A step attempt's duration (shardflow_step_duration_seconds) and, with tracing on,
    its span: current while the step runs, its trace ID the observation's exemplar."""

    __slots__ = ("histogram", "span", "started", "token")

    def __init__(self, histogram: Any, span: Any) -> None:
        self.histogram = histogram
        self.span = span
        self.token = None if span is None else tracing.activate(span)
        self.started = time.perf_counter()

    def end(self, outcome: str, error: BaseException | None = None) -> None:
        seconds = time.perf_counter() - self.started
        if self.span is None:
            self.histogram.observe(seconds)
            return
        tracing.deactivate(self.token)
        self.histogram.observe(seconds, exemplar={"trace_id": tracing.trace_id_of(self.span)})
        tracing.end(self.span, outcome, error)  # a retried attempt failed too


class WorkflowRunner:
    """Implements RunServices for the runs of one executor."""

    def __init__(
        self,
        store: ShardStore,
        committer: GroupCommitter,
        registry: Registry,
        faults: Faults,
        metrics: ShardMetrics,
        max_recovery_attempts: int = 5,
    ) -> None:
        self.max_recovery_attempts = max_recovery_attempts
        self.store = store
        self.committer = committer
        self.registry = registry
        self.faults = faults
        self.metrics = metrics
        self.foreign_seen = False  # claimed an instance of a version we have no code for
        self.shard = metrics.shard
        # Told each outcome this executor writes ({id, status, output, error}, as a
        # completion NOTIFY carries it): a router running it answers its waits in memory.
        self.on_finished: Callable[[dict[str, Any]], None] | None = None

    # -- RunServices ----------------------------------------------------------------
    async def checkpoint(self, run: WorkflowRun, steps: list[StepRow], **state: Any) -> FlushResult:
        record = WorkflowRecord(
            run.id,
            run.epoch,
            next_seq=run.seq,
            seen_signal=run.claimed.signal_seq,
            parent=run.claimed.parent,
            steps=steps,
            **state,
        )
        try:
            result: FlushResult = await self.committer.submit(record)
        except ShardUnavailableError:
            raise Lost() from None
        return result

    def checkpoint_later(self, run: WorkflowRun, steps: list[StepRow]) -> Awaitable[FlushResult]:
        record = WorkflowRecord(
            run.id, run.epoch, next_seq=run.seq, seen_signal=run.claimed.signal_seq, steps=steps
        )
        return self.committer.enqueue(record)

    async def transactional_step(
        self,
        run: WorkflowRun,
        step: AnyStep,
        seq: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        attempt: int,
        started: datetime,
    ) -> tuple[Any, bool]:
        try:
            async with self.store.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(query("workflow_lock_for_step"), run.id, run.epoch, seq)
                if row is None:
                    self.metrics.fenced_writes.inc()
                    raise Fenced()
                value = await with_timeout(step.fn(conn, *args, **kwargs), step.timeout, step.name)
                text = codec.dumps(value, f"the result of step {step.name}")
                await self.faults.point("before_step_commit")
                await conn.execute(
                    query("step_insert"), run.id, seq, step.name, text, attempt, started
                )
        except Exception as exc:
            if is_unavailable(exc):
                raise Lost() from exc
            raise
        await self.faults.point("after_step_commit")
        return value, bool(row["cancel_requested"])

    async def start_child(self, run: WorkflowRun, workflow: str, input: Any, child_id: str) -> None:
        request = StartRequest(
            workflow,
            input,
            child_id,
            run.claimed.routing_key or run.id,
            parent=run.id,
            priority=run.claimed.priority,  # a child runs at its parent's priority
            # in its parent's trace: under this run's span, or the context the parent came with
            traceparent=(tracing.current_traceparent() if tracing.on() else None)
            or run.claimed.traceparent,
        )
        try:
            (result,) = await start_many_on(self.store.pool, [request])
        except ShardUnavailableError:
            raise Lost() from None
        if result.conflict:
            raise WorkflowConflictError(f"child workflow ID {child_id!r} exists with another input")

    async def child_outcome(self, child_id: str) -> dict[str, Any] | None:
        try:
            rows = await self.store.pool.fetch(query("workflow_outcomes"), [child_id])
        except Exception as exc:
            if is_unavailable(exc):
                raise Lost() from exc
            raise
        if not rows or rows[0]["status"] not in FINISHED:
            return None
        return dict(rows[0])

    def step_retried(self, run: WorkflowRun, step: AnyStep) -> None:
        self.metrics.step_retries.labels(self.shard, run.claimed.name).inc()

    def step_probe(self, run: WorkflowRun, step: AnyStep, seq: int, attempt: int) -> StepProbe:
        span = None
        if tracing.on():
            span = tracing.start_child_span(
                f"step {step.name}",
                {
                    "shardflow.workflow.id": run.id,
                    "shardflow.workflow.name": run.claimed.name,
                    "shardflow.step.name": step.name,
                    "shardflow.step.seq": seq,
                    "shardflow.step.attempt": attempt,
                    "shardflow.shard": self.shard,
                },
            )
        return _Probe(
            self.metrics.step_duration.labels(self.shard, run.claimed.name, step.name), span
        )

    # -- one instance -------------------------------------------------------------------
    async def execute(self, claimed: ClaimedWorkflow, history: History) -> bool:
        """Run until the workflow finishes or suspends; False if it must be released."""
        definition = self.registry.get(claimed.name, claimed.version)
        if definition is None:
            # Another release's instance (or a SQL definition not loaded yet), claimed
            # before we learnt of it: give it back untouched; from now on the executor
            # claims only what it has code for.
            self.foreign_seen = True
            return False
        run = WorkflowRun(claimed, history, self)
        if claimed.attempt > self.max_recovery_attempts:
            run.stopping = RecoveryLimitExceeded(
                f"the workflow was recovered from a lost executor {claimed.attempt} times "
                f"(limit {self.max_recovery_attempts}); it is failed instead of looping"
            )
        run.bind()
        span = self._run_span(claimed) if tracing.on() else None
        traceparent = claimed.traceparent if span is None else tracing.traceparent_of(span)
        # this task's log lines (a task of its own)
        logs.bind(workflow_id=claimed.id, trace_id=tracing.trace_id(traceparent))
        if claimed.next_seq == 0:
            self.metrics.workflows_started.labels(self.shard, claimed.name).inc()
        token = None if span is None else tracing.activate(span)
        outcome, error = "interrupted", None
        try:
            outcome, error, finished, written = await self._run(run, definition)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if span is not None:
                tracing.deactivate(token)
                tracing.end(span, outcome, error)
        if finished:
            if self.on_finished is not None:
                self.on_finished(
                    {
                        "id": claimed.id,
                        "status": outcome,
                        "output": written.get("output"),
                        "error": written.get("error"),
                    }
                )
            labels = (self.shard, claimed.name)
            self.metrics.workflows_completed.labels(*labels, outcome).inc()
            self.metrics.workflow_duration.labels(*labels).observe(
                max(0.0, time.time() - claimed.created_at.timestamp()),
                exemplar=None if span is None else {"trace_id": tracing.trace_id_of(span)},
            )
        return outcome != "lost"

    def _run_span(self, claimed: ClaimedWorkflow) -> Any:
        return tracing.start_span(
            f"run {claimed.name}",
            claimed.traceparent,
            "consumer",
            {
                "shardflow.workflow.id": claimed.id,
                "shardflow.workflow.name": claimed.name,
                "shardflow.workflow.version": claimed.version,
                "shardflow.shard": self.shard,
                "shardflow.run.recovery": claimed.attempt,
                "shardflow.run.from_seq": claimed.next_seq,
            },
        )

    async def _run(
        self, run: WorkflowRun, definition: AnyWorkflow
    ) -> tuple[str, BaseException | None, bool, dict[str, Any]]:
        """(outcome, its error, whether this run finished the workflow, the state it
        wrote): outcome is the status written, or fenced (another run owns it now) or lost
        (the shard was)."""
        try:
            state = await self._drive(run, definition)
            failure = state.pop("failure", None)
            if run.has_unsaved and not self.committer.waiting(run.id, run.epoch):
                # The last step's flush is under way: let it land first. A cancel that
                # arrives now is too late: the workflow's code has finished.
                with contextlib.suppress(WorkflowCancelled):
                    await run.settle()
            result = await self.checkpoint(run, state.pop("steps", []), **state)
            run.abandon_unsaved()  # merged into the final record, or settled above
        except Fenced:
            run.abandon_unsaved()
            return "fenced", None, False, {}
        except Lost:
            run.abandon_unsaved()
            return "lost", None, False, {}
        status = state["status"]
        return status, failure, result.applied and status in FINISHED, state

    async def _drive(self, run: WorkflowRun, definition: AnyWorkflow) -> dict[str, Any]:
        try:
            # A cancelled run replays its history (so that its compensations are known)
            # and stops at its first new call.
            output = await self._call(run, definition)
            if run.fatal is not None:
                raise run.fatal
            return {"status": "completed", "output": codec.dumps(output, "the workflow's result")}
        except Suspend as s:
            return {"status": s.status, "run_at": s.run_at, "steps": s.steps}
        except WorkflowCancelled:
            error = {"type": "Cancelled", "code": "cancelled", "message": "cancelled on request"}
            return await self._end(run, "cancelled", error)
        except (Fenced, Lost):
            raise
        except Exception as exc:
            failure = run.fatal if run.fatal is not None else exc
            log.info("event=workflow_failed workflow=%s error=%r", run.id, failure)
            return {**await self._end(run, "failed", error_record(failure)), "failure": failure}

    async def _end(self, run: WorkflowRun, status: str, error: dict[str, Any]) -> dict[str, Any]:
        """A failed or cancelled end: the saga's compensations run first (not after a
        non-determinism error: the code no longer matches the history), and their names
        are written with the status, in the same statement."""
        if not isinstance(run.fatal, NonDeterminismError):
            names, failure = await run.compensate()
            error["compensations"] = names
            if failure is not None:
                error["compensation_error"] = error_record(failure)
                log.warning("event=compensation_failed workflow=%s error=%r", run.id, failure)
        return {"status": status, "error": codec.dumps(error, "error")}

    async def _call(self, run: WorkflowRun, definition: AnyWorkflow) -> Any:
        # The context is made here, not kept by the run: a run <-> context cycle per
        # workflow left ~30,000 objects per collection to the cyclic garbage collector
        # (pauses of 30-130 ms in the executor under load).
        ctx = Context(run)
        deadline = run.claimed.deadline
        if deadline is None:
            return await definition(ctx, codec.loads(run.claimed.input))
        remaining = deadline.timestamp() - time.time()
        message = f"workflow {definition.name} passed its deadline ({definition.timeout} s)"
        if remaining <= 0:
            # Replayed to its first new call, so that its compensations are known.
            run.stopping = WorkflowTimeoutError(message)
            return await definition(ctx, codec.loads(run.claimed.input))
        try:
            async with asyncio.timeout(remaining) as scope:
                return await definition(ctx, codec.loads(run.claimed.input))
        except TimeoutError:
            if scope.expired():
                raise WorkflowTimeoutError(message) from None
            raise
