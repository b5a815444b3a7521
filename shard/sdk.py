"""The programming model: ``@workflow`` and ``@step`` decorators and the registry.

Decorators only describe; they register nothing globally. An executor builds a
:class:`Registry` from the app modules it is given, by collecting the workflow
definitions found in them.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import types
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    overload,
)

from shardflow.infra.errors import SettingsError
from shardflow.shard.cron import ScheduleSpec
from shardflow.shard.runtime import current_run

if TYPE_CHECKING:
    import asyncpg

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
WorkflowFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_backoff, self.backoff * (2 ** (attempt - 1))))


@dataclass(frozen=True)
class StepDef(Generic[P, R]):
    """A declared step. Called from a workflow it is checkpointed; its type is the
    function's own (a transactional step's without its connection parameter)."""

    name: str
    fn: Callable[..., Any]
    policy: RetryPolicy
    timeout: float | None
    transactional: bool
    is_async: bool
    # Saga: the step that undoes this one, called with this step's arguments and then
    # its result, when the workflow fails or is cancelled after this step completed.
    compensate: AnyStep | None = None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        run = current_run()
        if run is None:
            return self.call_direct(*args, **kwargs)
        return run.call_step(self, args, kwargs)

    async def call_direct(self, *args: Any, **kwargs: Any) -> R:
        """Run the body once, outside any workflow (tests, scripts)."""
        if self.transactional:
            raise TypeError(
                f"transactional step {self.name} needs a connection: call it from a workflow"
            )
        result: R = await self.invoke(args, kwargs)
        return result

    async def invoke(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.is_async:
            return await self.fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.fn, *args, **kwargs))


@dataclass(frozen=True)
class WorkflowDef(Generic[P, R]):
    """A declared workflow; called directly (tests, scripts) it runs its function."""

    name: str
    version: str
    fn: Callable[P, Awaitable[R]]
    timeout: float | None = None
    schedule: ScheduleSpec | None = None
    max_running: int | None = None  # at once, across the cluster
    max_running_per_shard: int | None = None

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.fn(*args, **kwargs)


AnyStep = StepDef[..., Any]
AnyWorkflow = WorkflowDef[..., Any]


class _StepDecorator(Protocol):
    """What ``@step(...)`` returns for a plain step: async or plain ``def``."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> StepDef[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> StepDef[P, R]: ...


@overload
def step(fn: Callable[P, Coroutine[Any, Any, R]], /) -> StepDef[P, R]: ...


@overload
def step(fn: Callable[P, R], /) -> StepDef[P, R]: ...


@overload
def step(
    *,
    name: str | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    max_backoff: float = 30.0,
    timeout: float | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    transactional: Literal[True],
    compensate: AnyStep | Callable[..., Any] | None = None,
) -> Callable[
    [Callable[Concatenate[asyncpg.Connection[Any], P], Coroutine[Any, Any, R]]], StepDef[P, R]
]: ...


@overload
def step(
    *,
    name: str | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    max_backoff: float = 30.0,
    timeout: float | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    transactional: Literal[False] = False,
    compensate: AnyStep | Callable[..., Any] | None = None,
) -> _StepDecorator: ...


def step(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    max_backoff: float = 30.0,
    timeout: float | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    transactional: bool = False,
    compensate: AnyStep | Callable[..., Any] | None = None,
) -> Any:
    """Declare a step: its result is checkpointed and returned as recorded on replay.

    A plain step is at-least-once (retried ``retries`` times with exponential backoff
    from ``backoff`` seconds, capped at ``max_backoff``, for exceptions in
    ``retry_on``). A ``transactional`` step receives the asyncpg connection of the
    checkpoint's transaction as its first argument: its writes and its checkpoint
    commit together, exactly once. ``compensate`` (a step, or a function made into one)
    undoes it: when the workflow fails or is cancelled, the compensations of its
    completed steps run in reverse order, each a durable step called with the original
    arguments followed by the original result.
    """
    if retries < 0 or backoff < 0 or max_backoff < 0 or (timeout is not None and timeout <= 0):
        raise SettingsError("step retries, backoff and timeout must be positive numbers")
    on = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    undo = compensate if isinstance(compensate, StepDef) or compensate is None else step(compensate)

    def wrap(f: Callable[..., Any]) -> AnyStep:
        is_async = inspect.iscoroutinefunction(f)
        if transactional and not is_async:
            raise SettingsError(f"transactional step {f.__qualname__} must be async def")
        definition: AnyStep = StepDef(
            name=name or f.__qualname__,
            fn=f,
            policy=RetryPolicy(retries, backoff, max_backoff, on),
            timeout=timeout,
            transactional=transactional,
            is_async=is_async,
            compensate=undo,
        )
        return definition

    return wrap(fn) if fn is not None else wrap


@overload
def workflow(fn: Callable[P, Awaitable[R]], /) -> WorkflowDef[P, R]: ...


@overload
def workflow(
    *,
    name: str | None = None,
    version: str = "1",
    timeout: float | None = None,
    schedule: str | None = None,
    timezone: str = "UTC",
    overlap: str = "skip",
    max_running: int | None = None,
    max_running_per_shard: int | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], WorkflowDef[P, R]]: ...


def workflow(
    fn: WorkflowFn | None = None,
    /,
    *,
    name: str | None = None,
    version: str = "1",
    timeout: float | None = None,
    schedule: str | None = None,
    timezone: str = "UTC",
    overlap: str = "skip",
    max_running: int | None = None,
    max_running_per_shard: int | None = None,
) -> Any:
    """Declare a workflow: ``async def wf(ctx, input)``, replayed from its checkpoints.

    ``schedule`` (a cron expression, in ``timezone``, with the ``overlap`` policy ``skip``
    or ``allow``) also starts it on every tick, under a schedule named after it, once the
    executors that define it registered with the cluster (``shard.cron`` says how).

    ``max_running`` caps the instances running at once across the cluster (the leading
    coordinator shares it out among the shards), ``max_running_per_shard`` on each
    shard; the others wait in the queue without holding up other workflows.
    """
    if timeout is not None and timeout <= 0:
        raise SettingsError("workflow timeout must be a positive number of seconds")
    spec = None if schedule is None else ScheduleSpec(schedule, timezone, overlap)
    for label, cap in (
        ("max_running", max_running),
        ("max_running_per_shard", max_running_per_shard),
    ):
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            raise SettingsError(f"{label} must be a whole number of at least 1, not {cap!r}")

    def wrap(f: WorkflowFn) -> AnyWorkflow:
        if not inspect.iscoroutinefunction(f):
            raise SettingsError(f"workflow {f.__qualname__} must be async def")
        return WorkflowDef(
            name=name or f.__name__,
            version=str(version),
            fn=f,
            timeout=timeout,
            schedule=spec,
            max_running=max_running,
            max_running_per_shard=max_running_per_shard,
        )

    return wrap(fn) if fn is not None else wrap


@dataclass
class Registry:
    """The workflows an executor can run: its code's, by name, and every version of the
    workflows defined in SQL on its shard (``add_version``)."""

    workflows: dict[str, AnyWorkflow] = field(default_factory=dict)
    versions: dict[tuple[str, str], AnyWorkflow] = field(default_factory=dict)

    def add(self, definition: AnyWorkflow) -> None:
        existing = self.workflows.get(definition.name)
        if existing is not None and existing is not definition:
            raise SettingsError(f"workflow {definition.name} is defined twice")
        self.workflows[definition.name] = definition
        self.versions[(definition.name, definition.version)] = definition

    def add_version(self, definition: AnyWorkflow) -> None:
        """One version of a workflow that is not the code's (a SQL definition)."""
        if definition.name not in self.workflows:
            self.versions[(definition.name, definition.version)] = definition

    def get(self, name: str, version: str | None = None) -> AnyWorkflow | None:
        if version is not None:
            return self.versions.get((name, version))
        return self.workflows.get(name)

    @classmethod
    def from_modules(
        cls, modules: Iterable[types.ModuleType | str], app_dir: str | None = None
    ) -> Registry:
        """The workflows of these modules; names are imported from ``app_dir`` (default:
        the working directory) and PYTHONPATH, a failed import is a SettingsError."""
        from shardflow.shard.apps import import_apps

        names = [m for m in modules if isinstance(m, str)]
        loaded = iter(import_apps(names, app_dir))
        registry = cls()
        for module in modules:
            mod = next(loaded) if isinstance(module, str) else module
            for value in vars(mod).values():
                if isinstance(value, WorkflowDef):
                    registry.add(value)
        return registry

    @classmethod
    def of(cls, *definitions: AnyWorkflow) -> Registry:
        registry = cls()
        for definition in definitions:
            registry.add(definition)
        return registry
