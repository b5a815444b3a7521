"""The one exception hierarchy of Shardflow, rooted at ShardflowError.

Every error a user can cause carries a stable ``code`` (also used by the HTTP
API) and a message that says what to do. Errors raised by the shard's SQL API
carry SQLSTATEs of class ``SF``; :func:`from_postgres` maps them here.
"""

from __future__ import annotations

from typing import Any


class ShardflowError(Exception):
    """Base of every Shardflow error."""

    code = "shardflow_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class SettingsError(ShardflowError):
    code = "invalid_setting"


class SerializationError(ShardflowError, TypeError):
    code = "not_serializable"


class UnknownWorkflowError(ShardflowError):
    code = "unknown_workflow"


class InvalidWorkflowIdError(ShardflowError):
    code = "invalid_id"


class WorkflowConflictError(ShardflowError):
    code = "conflict"


class WorkflowNotFoundError(ShardflowError):
    code = "not_found"


class WorkflowFinishedError(ShardflowError):
    code = "finished"


class ShardUnavailableError(ShardflowError):
    code = "shard_unavailable"


class SlotMovedError(ShardflowError):
    """The shard does not own the workflow's slot: refresh the slot map and retry."""

    code = "slot_moved"


class IdElsewhereError(ShardflowError):
    """A start under an ID that a workflow placed by another routing key holds: the router
    looks it up there (the directory) and answers as for any repeated start."""

    code = "id_elsewhere"


class BadRequestError(ShardflowError):
    code = "bad_request"


class OverloadedError(ShardflowError):
    code = "overloaded"


class ResultTimeoutError(ShardflowError):
    code = "result_timeout"


class WorkflowFailedError(ShardflowError):
    """Raised by ``result()`` for a workflow that ended failed; ``error`` is its record."""

    code = "workflow_failed"

    def __init__(self, message: str, error: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error = error or {}


class WorkflowCancelledError(WorkflowFailedError):
    code = "workflow_cancelled"


class NonDeterminismError(ShardflowError):
    """Replayed workflow code called another step than the one recorded at a position."""

    code = "non_determinism"


class StepFailedError(ShardflowError):
    """A step failed for good (retries exhausted or not retryable); raised in the workflow."""

    code = "step_failed"

    def __init__(self, message: str, error: dict[str, Any]) -> None:
        super().__init__(message)
        self.error = error


class ChildWorkflowFailedError(ShardflowError):
    """A child workflow ended failed or cancelled; raised in the parent at ctx.child()."""

    code = "child_failed"

    def __init__(self, message: str, error: dict[str, Any]) -> None:
        super().__init__(message)
        self.error = error


class StepTimeoutError(ShardflowError):
    code = "step_timeout"


class NonRetryableError(ShardflowError):
    """Raise from a step to fail it at once, without further retries."""

    code = "non_retryable"


class WorkflowTimeoutError(ShardflowError):
    code = "workflow_timeout"


class RecoveryLimitExceeded(ShardflowError):
    """The workflow crashed its executor more often than ``--max-recovery-attempts``."""

    code = "recovery_limit"


class EventTimeoutError(ShardflowError):
    code = "event_timeout"


class InvalidScheduleError(ShardflowError):
    """A cron expression, time zone or overlap policy that cannot be used."""

    code = "invalid_schedule"


class ScheduleNotFoundError(ShardflowError):
    code = "not_found"


class ScheduleConflictError(ShardflowError):
    code = "conflict"


_BY_SQLSTATE: dict[str, type[ShardflowError]] = {
    "SF001": UnknownWorkflowError,
    "SF002": InvalidWorkflowIdError,
    "SF003": WorkflowConflictError,
    "SF004": WorkflowNotFoundError,
    "SF005": WorkflowFinishedError,
    "SF006": SlotMovedError,
}


def from_postgres(exc: BaseException) -> ShardflowError | None:
    """The ShardflowError for a Postgres error raised by the shard's SQL API, if any."""
    sqlstate = getattr(exc, "sqlstate", None)
    cls = _BY_SQLSTATE.get(sqlstate or "")
    if cls is None:
        return None
    return cls(str(getattr(exc, "message", exc)))
