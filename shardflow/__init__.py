"""Shardflow: durable workflows on PostgreSQL, sharded.

The public face: ``from shardflow import workflow, step, Context, Client``. Logic lives in
the component subpackages (``shardflow.shard``, ``shardflow.router``,
``shardflow.coordinator``, ``shardflow.metrics``). Names are exported lazily: importing
``shardflow`` loads none of them, so a component importing ``shardflow.<x>`` never
cycles back through this module.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("shardflow")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# name -> the module that defines it
_EXPORTS = {
    "Client": "shardflow.router.client",
    "SyncClient": "shardflow.router.client",
    "ShardClient": "shardflow.shard.client",
    "StartRequest": "shardflow.shard.client",
    "StartResult": "shardflow.shard.client",
    "ChildHandle": "shardflow.shard.runtime",
    "Context": "shardflow.shard.runtime",
    "Registry": "shardflow.shard.sdk",
    "step": "shardflow.shard.sdk",
    "workflow": "shardflow.shard.sdk",
    **{
        name: "shardflow.infra.errors"
        for name in (
            "EventTimeoutError",
            "InvalidWorkflowIdError",
            "NonDeterminismError",
            "NonRetryableError",
            "ResultTimeoutError",
            "SerializationError",
            "SettingsError",
            "ShardflowError",
            "ShardUnavailableError",
            "StepFailedError",
            "StepTimeoutError",
            "UnknownWorkflowError",
            "WorkflowCancelledError",
            "WorkflowConflictError",
            "WorkflowFailedError",
            "WorkflowFinishedError",
            "WorkflowNotFoundError",
            "WorkflowTimeoutError",
        )
    },
}

if TYPE_CHECKING:
    from shardflow.infra.errors import (
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
    from shardflow.router.client import Client, SyncClient
    from shardflow.shard.client import ShardClient, StartRequest, StartResult
    from shardflow.shard.runtime import ChildHandle, Context
    from shardflow.shard.sdk import Registry, step, workflow


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shardflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


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
    "__version__",
    "step",
    "workflow",
]
