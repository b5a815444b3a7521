"""Shardflow: durable workflows on PostgreSQL, sharded.

The public face: ``from shardflow import workflow, step, Context``. Logic lives in
the component packages (``shard``, ``router``, ``coordinator``, ``metrics``).
"""

from router.client import Client, SyncClient
from shard.client import ShardClient, StartRequest, StartResult
from shard.errors import (
    EventTimeoutError,
    InvalidWorkflowIdError,
    NonDeterminismError,
    NonRetryableError,
    ResultTimeoutError,
    SerializationError,
    SettingsError,
    ShardflowError,
    ShardUnavailableError,
    StepFailedError,
    StepTimeoutError,
    UnknownWorkflowError,
    WorkflowCancelledError,
    WorkflowConflictError,
    WorkflowFailedError,
    WorkflowFinishedError,
    WorkflowNotFoundError,
    WorkflowTimeoutError,
)
from shard.runtime import ChildHandle, Context
from shard.sdk import Registry, step, workflow

__all__ = [
    "ChildHandle",
    "Client",
    "Context",
    "EventTimeoutError",
    "InvalidWorkflowIdError",
    "NonDeterminismError",
    "NonRetryableError",
    "Registry",
    "ResultTimeoutError",
    "SerializationError",
    "SettingsError",
    "ShardClient",
    "ShardUnavailableError",
    "ShardflowError",
    "StartRequest",
    "StartResult",
    "StepFailedError",
    "StepTimeoutError",
    "SyncClient",
    "UnknownWorkflowError",
    "WorkflowCancelledError",
    "WorkflowConflictError",
    "WorkflowFailedError",
    "WorkflowFinishedError",
    "WorkflowNotFoundError",
    "WorkflowTimeoutError",
    "step",
    "workflow",
]
