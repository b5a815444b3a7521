"""Replay of one workflow instance: step calls, recorded values, timers and events.

A workflow is re-run from the start each time it is claimed. Every step call,
timer and recorded value takes the next position (``seq``); a position with a
checkpoint returns what was recorded instead of running again, and a position
recorded under another name is a NonDeterminismError naming both.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
import traceback
import uuid as _uuid
from collections.abc import Awaitable, Coroutine
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from shardflow.infra import logs
from shardflow.infra.errors import (
    ChildWorkflowFailedError,
    EventTimeoutError,
    NonDeterminismError,
    NonRetryableError,
    SerializationError,
    ShardflowError,
    ShardUnavailableError,
    StepFailedError,
    StepTimeoutError,
)
from shardflow.shard import codec
from shardflow.shard.model import ClaimedWorkflow, FlushResult, History, StepRow

if TYPE_CHECKING:
    from shardflow.shard.sdk import AnyStep

_CURRENT: ContextVar[WorkflowRun | None] = ContextVar("shardflow_run", default=None)


def current_run() -> WorkflowRun | None:
    return _CURRENT.get()


class ControlFlow(BaseException):
    """Unwinds workflow code; BaseException so ``except Exception`` cannot swallow it."""


class Suspend(ControlFlow):
    def __init__(self, status: str, run_at: datetime | None, steps: list[StepRow]) -> None:
        super().__init__(status)
        self.status, self.run_at, self.steps = status, run_at, steps


class Fenced(ControlFlow):
    """This executor's lease on the workflow is gone; drop it without writing."""


class Lost(ControlFlow):
    """A write's outcome is unknown (the shard went away); release and replay later."""


class WorkflowCancelled(ControlFlow):
    """Cancellation was requested; raised into workflow code at its next checkpoint."""


def error_record(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "code": getattr(exc, "code", None),
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


# A retry backoff longer than this (seconds) is a durable timer, not an in-memory sleep.
DURABLE_BACKOFF = 2.0

# The step row that opens a saga's compensations (its position ends the workflow's code).
COMPENSATE_MARK = "saga.compensate"


def _check(result: FlushResult, run: WorkflowRun) -> None:
    if not result.applied:
        raise Fenced()
    if result.cancel_requested:
        run.cancel_requested()


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def utcnow() -> datetime:
    return datetime.now(UTC)


class StepProbe(Protocol):
    """One step attempt's duration and span (WorkflowRunner.step_probe)."""

    def end(self, outcome: str, error: BaseException | None = None) -> None:
        """outcome: completed, retrying, failed or interrupted (a suspension, a lost
        lease or a lost shard stopped the run during the step)."""
        ...


class RunServices(Protocol):
    """What a run needs from its executor (the committer and the store)."""

    async def checkpoint(
        self, run: WorkflowRun, steps: list[StepRow], **state: Any
    ) -> FlushResult: ...

    async def transactional_step(
        self,
        run: WorkflowRun,
        step: AnyStep,
        seq: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        attempt: int,
        started: datetime,
    ) -> tuple[Any, bool]: ...

    def step_retried(self, run: WorkflowRun, step: AnyStep) -> None: ...

    def step_probe(self, run: WorkflowRun, step: AnyStep, seq: int, attempt: int) -> StepProbe:
        """Started as an attempt of ``step`` begins; ended with its outcome."""
        ...

    async def start_child(self, run: WorkflowRun, workflow: str, input: Any, child_id: str) -> None:
        """Start a child on the parent's shard, with the parent's routing key (idempotent)."""
        ...

    async def child_outcome(self, child_id: str) -> dict[str, Any] | None:
        """The child's {status, output, error} once finished, else None."""
        ...

    def checkpoint_later(self, run: WorkflowRun, steps: list[StepRow]) -> Awaitable[FlushResult]:
        """Queue a checkpoint without waiting for it (see WorkflowRun.settle)."""
        ...


class WorkflowRun:
    def __init__(self, claimed: ClaimedWorkflow, history: History, services: RunServices) -> None:
        self.claimed = claimed
        self.id = claimed.id
        self.epoch = claimed.epoch
        self.history = history
        self.services = services
        self.seq = 0
        self.fatal: BaseException | None = None
        self._event_counts: dict[str, int] = {}
        self._unsaved: list[Awaitable[FlushResult]] = []
        # Saga state: completed steps that have a compensation (position, step, arguments,
        # result); a cancelled run replays its history and stops at the first new call.
        self.compensable: list[tuple[int, AnyStep, tuple[Any, ...], dict[str, Any], Any]] = []
        self.cancelling = claimed.cancel_requested
        self.compensating = False
        # A deadline passed, or the recovery limit: the run replays its history (so that
        # its compensations are known) and this is raised at its first new call.
        self.stopping: ShardflowError | None = None

    def bind(self) -> object:
        return _CURRENT.set(self)

    def cancel_requested(self) -> None:
        """A cancel arrived: from now on this run starts nothing new."""
        self.cancelling = True
        self.stop_if_cancelling()

    def stop_if_cancelling(self) -> None:
        """Raise WorkflowCancelled into a cancelled run's code, or the reason it must stop
        (not into its compensations, which must run to the end)."""
        if self.compensating:
            return
        if self.cancelling:
            raise WorkflowCancelled()
        if self.stopping is not None:
            raise self.stopping

    def next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq

    def recorded(self, seq: int, name: str) -> Any:
        rec = self.history.steps.get(seq)
        if rec is None:
            self.stop_if_cancelling()  # replayed up to here: nothing new runs
            return None
        if rec.name == COMPENSATE_MARK and name != COMPENSATE_MARK:
            # The code was stopped at this point; its compensations come next.
            self.seq = seq
            if self.stopping is not None and not self.cancelling:
                raise self.stopping
            raise WorkflowCancelled()
        if rec.name != name:
            err = NonDeterminismError(
                f"workflow {self.claimed.name} (ID {self.id}) is not deterministic: at "
                f"position {seq} the code now calls {name!r} but the recorded history has "
                f"{rec.name!r}; keep code replay-stable or start a new workflow version",
                recorded=rec.name,
                called=name,
                seq=seq,
            )
            self.fatal = err
            raise err
        return rec

    async def save(self, steps: list[StepRow]) -> None:
        await self.settle()
        _check(await self.services.checkpoint(self, steps), self)

    def save_later(self, steps: list[StepRow]) -> None:
        """Queue a plain step's checkpoint and go on: it is awaited (settled) before any
        further effect of the workflow, and the final state merges with it when it has
        not been flushed yet (one commit instead of two for the last step)."""
        self._unsaved.append(self.services.checkpoint_later(self, steps))

    @property
    def has_unsaved(self) -> bool:
        return bool(self._unsaved)

    async def settle(self) -> None:
        """Wait until every queued checkpoint is durable; raise if one was fenced or lost."""
        while self._unsaved:
            pending = self._unsaved.pop(0)
            try:
                result = await asyncio.shield(pending)
            except ShardUnavailableError:
                raise Lost() from None
            _check(result, self)

    def abandon_unsaved(self) -> None:
        """Forget queued checkpoints (their outcome no longer matters), retrieving errors."""
        for pending in self._unsaved:
            if isinstance(pending, asyncio.Future):
                pending.add_done_callback(_retrieve)
        self._unsaved.clear()

    # -- steps -----------------------------------------------------------------
    def call_step(
        self, step: AnyStep, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        return self._step(step, self.next_seq(), args, kwargs)

    async def _step(
        self, step: AnyStep, seq: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        rec = self.recorded(seq, step.name)
        attempt = 0
        if rec is not None:
            if rec.status == "failed":
                error = codec.loads(rec.error) or {}
                raise StepFailedError(_failed_message(step.name, error), error)
            if rec.status != "retrying":
                return self._completed(seq, step, args, kwargs, codec.loads(rec.output))
            # Failed attempts recorded before: the count goes on, and a durable backoff
            # that has not run out suspends the workflow again.
            self.stop_if_cancelling()
            attempt = rec.attempts
            retry_at = float(codec.loads(rec.output)["retry_at"])
            if time.time() < retry_at:
                await self.settle()
                raise Suspend("sleeping", self._wake_time(retry_at), [])
        await self.settle()
        started = utcnow()
        while True:
            attempt += 1
            probe = self.services.step_probe(self, step, seq, attempt)
            try:
                if step.transactional:
                    value, cancel = await self.services.transactional_step(
                        self, step, seq, args, kwargs, attempt, started
                    )
                    probe.end("completed")
                    self._completed(seq, step, args, kwargs, value)
                    if cancel:
                        self.cancel_requested()
                    return value
                with logs.context(step=step.name):
                    value = await with_timeout(step.invoke(args, kwargs), step.timeout, step.name)
            except (ControlFlow, asyncio.CancelledError):
                probe.end("interrupted")
                raise
            except SerializationError as exc:
                probe.end("failed", exc)
                raise
            except Exception as exc:
                retryable = isinstance(exc, step.policy.retry_on) and not isinstance(
                    exc, NonRetryableError | NonDeterminismError
                )
                if retryable and attempt <= step.policy.retries:
                    probe.end("retrying", exc)
                    self.services.step_retried(self, step)
                    await self._retry_later(seq, step, attempt, started, exc)
                    continue
                probe.end("failed", exc)
                error = error_record(exc)
                error["attempts"] = attempt
                row = StepRow(
                    seq, step.name, "failed", None, codec.dumps(error, "error"), attempt, started
                )
                await self.save([row])
                raise StepFailedError(_failed_message(step.name, error), error) from exc
            probe.end("completed")
            text = codec.dumps(value, f"the result of step {step.name}")
            self.save_later([StepRow(seq, step.name, "completed", text, None, attempt, started)])
            return self._completed(seq, step, args, kwargs, value)

    async def _retry_later(
        self, seq: int, step: AnyStep, attempt: int, started: datetime, exc: Exception
    ) -> None:
        """Record failed attempt ``attempt`` (so ``retries`` bounds the attempts across
        crashes), then wait out its backoff: in memory when short, else as a durable timer
        (the workflow sleeps, its lease released, and the next attempt runs on replay)."""
        delay = step.policy.delay(attempt)
        retry_at = time.time() + delay
        error = error_record(exc)
        error["attempts"] = attempt
        row = StepRow(
            seq,
            step.name,
            "retrying",
            codec.dumps({"retry_at": retry_at}, "retry time"),
            codec.dumps(error, "error"),
            attempt,
            started,
        )
        if delay > DURABLE_BACKOFF:
            self.stop_if_cancelling()
            await self.settle()  # what concurrent steps queued lands before the suspension
            raise Suspend("sleeping", self._wake_time(retry_at), [row])
        await self.save([row])
        await asyncio.sleep(delay)

    def _completed(
        self, seq: int, step: AnyStep, args: tuple[Any, ...], kwargs: dict[str, Any], value: Any
    ) -> Any:
        if step.compensate is not None:
            self.compensable.append((seq, step, args, kwargs, value))
        return value

    async def compensate(self) -> tuple[list[str], StepFailedError | None]:
        """Run the compensations of the completed steps, latest first, each a durable step.

        Returns the names of those that ran, and the failure that stopped them, if any.
        A replay finds the ones already done in the history and skips their effects."""
        self.compensating = True
        if not self.compensable:
            return [], None
        seq = self.next_seq()
        rec = self.recorded(seq, COMPENSATE_MARK)
        if rec is None:
            self.save_later([StepRow(seq, COMPENSATE_MARK, "completed", "null", None, 1, utcnow())])
        names: list[str] = []
        for _, step, args, kwargs, result in sorted(self.compensable, key=lambda c: -c[0]):
            assert step.compensate is not None
            try:
                await self.call_step(step.compensate, (*args, result), kwargs)
            except StepFailedError as exc:
                return names, exc
            names.append(step.compensate.name)
        await self.settle()
        return names, None

    # -- recorded values, timers, events ------------------------------------------
    async def record_value(self, name: str, make: Any) -> Any:
        seq = self.next_seq()
        rec = self.recorded(seq, name)
        if rec is not None:
            return codec.loads(rec.output)
        value = make()
        await self.save(
            [StepRow(seq, name, "completed", codec.dumps(value, name), None, 1, utcnow())]
        )
        return value

    def _wake_time(self, at: float) -> datetime:
        deadline = self.claimed.deadline
        moment = datetime.fromtimestamp(at, UTC)
        return min(moment, deadline) if deadline is not None else moment

    async def sleep_until(self, at: float) -> None:
        seq = self.next_seq()
        rec = self.recorded(seq, "ctx.sleep")
        new: list[StepRow] = []
        if rec is not None:
            at = float(codec.loads(rec.output))
        else:
            new.append(
                StepRow(
                    seq, "ctx.sleep", "completed", codec.dumps(at, "wake time"), None, 1, utcnow()
                )
            )
        if time.time() >= at:
            if new:
                await self.save(new)
            return
        self.stop_if_cancelling()  # a cancelled sleeper stops at once
        await self.settle()
        raise Suspend("sleeping", self._wake_time(at), new)

    async def child(self, workflow: str, input: Any, child_id: str | None) -> Any:
        """Start a child workflow (recorded), then wait for its outcome (suspended)."""
        # Both positions are taken before any await, so children started together under
        # ctx.gather get the same positions on every replay (a data-dependent fan-out).
        seq = self.next_seq()
        result_seq = self.next_seq()
        child_id = await self.start_child(seq, workflow, input, child_id)
        return await self.child_result(result_seq, workflow, child_id)

    async def start_child(self, seq: int, workflow: str, input: Any, child_id: str | None) -> str:
        """Start a child at position ``seq`` (once: a replay reads its ID back)."""
        rec = self.recorded(seq, f"ctx.child:{workflow}")
        if rec is not None:
            return str(codec.loads(rec.output)["id"])
        child_id = child_id or f"{self.id}/{seq}"
        await self.settle()
        await self.services.start_child(self, workflow, input, child_id)
        await self.save(
            [
                StepRow(
                    seq,
                    f"ctx.child:{workflow}",
                    "completed",
                    codec.dumps({"id": child_id}, "child"),
                    None,
                    1,
                    utcnow(),
                )
            ]
        )
        return child_id

    async def child_result(self, seq: int, workflow: str, child_id: str) -> Any:
        """The child's output, recorded at position ``seq``; suspends until it finishes."""
        label = f"ctx.child_result:{workflow}"
        rec = self.recorded(seq, label)
        outcome = codec.loads(rec.output) if rec is not None else None
        if outcome is None:
            found = await self.services.child_outcome(child_id)
            if found is None:
                await self.settle()
                raise Suspend("waiting", self.claimed.deadline, [])  # woken by the child
            outcome = {
                "id": child_id,
                "status": found["status"],
                "output": codec.loads(found["output"]),
                "error": codec.loads(found["error"]),
            }
            await self.save(
                [StepRow(seq, label, "completed", codec.dumps(outcome, "child"), None, 1, utcnow())]
            )
        if outcome["status"] != "completed":
            raise ChildWorkflowFailedError(
                f"child workflow {child_id} ended {outcome['status']}", outcome["error"] or {}
            )
        return outcome["output"]

    async def wait_for_event(self, name: str, timeout: float | None) -> Any:
        count = self._event_counts.get(name, 0)
        self._event_counts[name] = count + 1
        seq = self.next_seq()
        rec = self.recorded(seq, "ctx.event_deadline")
        new: list[StepRow] = []
        if rec is not None:
            deadline = codec.loads(rec.output)
        else:
            deadline = None if timeout is None else time.time() + timeout
            new.append(
                StepRow(
                    seq,
                    "ctx.event_deadline",
                    "completed",
                    codec.dumps(deadline, "deadline"),
                    None,
                    1,
                    utcnow(),
                )
            )
        seq = self.next_seq()
        label = f"ctx.wait_for_event:{name}"
        rec = self.recorded(seq, label)
        if rec is not None:
            outcome = codec.loads(rec.output)
            if outcome.get("timeout"):
                raise EventTimeoutError(f"no event {name!r} arrived within {timeout} s")
            return outcome["payload"]
        arrived = self.history.events.get(name, [])
        if count < len(arrived):
            payload = arrived[count]
            new.append(
                StepRow(
                    seq,
                    label,
                    "completed",
                    codec.dumps({"payload": payload}, "event"),
                    None,
                    1,
                    utcnow(),
                )
            )
            await self.save(new)
            return payload
        if deadline is not None and time.time() >= deadline:
            new.append(StepRow(seq, label, "completed", '{"timeout":true}', None, 1, utcnow()))
            await self.save(new)
            raise EventTimeoutError(f"no event {name!r} arrived within {timeout} s")
        # No timeout of its own: woken by the event, or by the workflow's deadline.
        run_at = self.claimed.deadline if deadline is None else self._wake_time(float(deadline))
        await self.settle()
        raise Suspend("waiting", run_at, new)


async def with_timeout(aw: Awaitable[Any], timeout: float | None, name: str) -> Any:
    if timeout is None:
        return await aw
    try:
        async with asyncio.timeout(timeout) as scope:
            return await aw
    except TimeoutError:
        if scope.expired():
            raise StepTimeoutError(f"step {name} did not finish within {timeout} s") from None
        raise


def _failed_message(name: str, error: dict[str, Any]) -> str:
    return (
        f"step {name} failed after {error.get('attempts', 1)} attempt(s): "
        f"{error.get('type')}: {error.get('message')}"
    )


def _workflow_name(workflow: Any) -> str:
    """A workflow given by name or by its definition."""
    return workflow if isinstance(workflow, str) else str(workflow.name)


class ChildHandle:
    """A started child workflow (``ctx.start_child``)."""

    def __init__(self, run: WorkflowRun, workflow: str, child_id: str) -> None:
        self._run = run
        self._workflow = workflow
        self.id = child_id

    def result(self) -> Coroutine[Any, Any, Any]:
        """The child's output (a durable wait); ChildWorkflowFailedError if it failed."""
        return self._run.child_result(self._run.next_seq(), self._workflow, self.id)


class Context:
    """What workflow code receives as ``ctx``; every method is replay-safe."""

    def __init__(self, run: WorkflowRun) -> None:
        self._run = run

    @property
    def workflow_id(self) -> str:
        return self._run.id

    @property
    def workflow_name(self) -> str:
        return self._run.claimed.name

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        """A durable timer: the instance is suspended, not held in memory."""
        return self._run.sleep_until(time.time() + float(seconds))

    def sleep_until(self, when: datetime) -> Coroutine[Any, Any, None]:
        if when.tzinfo is None:
            raise ValueError("sleep_until needs a timezone-aware datetime")
        return self._run.sleep_until(when.timestamp())

    def wait_for_event(self, name: str, timeout: float | None = None) -> Coroutine[Any, Any, Any]:
        """Return the payload of the next event ``name``; EventTimeoutError after ``timeout``."""
        return self._run.wait_for_event(name, timeout)

    def child(
        self, workflow: Any, input: Any = None, *, id: str | None = None
    ) -> Coroutine[Any, Any, Any]:
        """Run a child workflow on this workflow's shard and return its output.

        The child inherits the parent's routing key; its ID defaults to ``<parent>/<seq>``
        (so a replay never starts it twice); a failed or cancelled child raises
        ChildWorkflowFailedError here."""
        return self._run.child(_workflow_name(workflow), input, id)

    async def start_child(
        self, workflow: Any, input: Any = None, *, id: str | None = None
    ) -> ChildHandle:
        """Start a child workflow and go on; ``await handle.result()`` later for its output.
        Same rules as :meth:`child` (routing key, default ID, failures)."""
        name = _workflow_name(workflow)
        run = self._run
        child_id = await run.start_child(run.next_seq(), name, input, id)
        return ChildHandle(run, name, child_id)

    async def patched(self, change_id: str) -> bool:
        """Whether this run takes the new code path of an in-place change ``change_id``.

        A run that gets here for the first time takes it (and records a marker, so its
        replays do too); a run whose history was recorded by the code before the change
        has something else at this position, and keeps the old path: ``if await
        ctx.patched("x"): new() else: old()``. Once no run of the old code is left, drop
        the old branch (keep the call while runs that recorded the marker may replay).
        """
        run = self._run
        name = f"ctx.patched:{change_id}"
        rec = run.history.steps.get(run.seq)
        if rec is not None and rec.name not in (name, COMPENSATE_MARK):
            return False
        return bool(await run.record_value(name, lambda: True))

    async def now(self) -> datetime:
        value = await self._run.record_value("ctx.now", time.time)
        return datetime.fromtimestamp(float(value), UTC)

    async def uuid(self) -> str:
        return str(await self._run.record_value("ctx.uuid", lambda: str(_uuid.uuid4())))

    async def random(self) -> float:
        return float(await self._run.record_value("ctx.random", _random.random))

    async def gather(self, *aws: Awaitable[Any]) -> list[Any]:
        """Run steps concurrently; the first failure cancels the others and is raised."""
        tasks = [asyncio.ensure_future(a) for a in aws]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            pending = [t for t in tasks if not t.done()]
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
            if failed or pending:
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        control = [t.exception() for t in failed if isinstance(t.exception(), ControlFlow)]
        if control:
            raise control[0]  # type: ignore[misc]
        if failed:
            raise failed[0].exception()  # type: ignore[misc]
        return [t.result() for t in tasks]
