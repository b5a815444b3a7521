"""Async client for one shard: start, inspect, wait for, cancel and signal workflows.

``start(..., conn=conn)`` enqueues inside the caller's own open transaction on the
shard, so application data and the workflow start commit together (or neither).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shardflow.infra import placement, tracing
from shardflow.infra.dbfaults import is_unavailable
from shardflow.infra.errors import (
    BadRequestError,
    IdElsewhereError,
    InvalidWorkflowIdError,
    OverloadedError,
    SerializationError,
    ShardflowError,
    ShardUnavailableError,
    SlotMovedError,
    UnknownWorkflowError,
    WorkflowCancelledError,
    WorkflowConflictError,
    WorkflowFailedError,
    WorkflowNotFoundError,
    from_postgres,
)
from shardflow.infra.pool import close_pool, create_pool
from shardflow.shard import codec
from shardflow.shard.queries import query
from shardflow.shard.sdk import AnyWorkflow, WorkflowDef
from shardflow.shard.waiters import ResultWaiters


@dataclass(frozen=True, slots=True)
class StartRequest:
    workflow: str
    input: Any
    id: str | None = None
    routing_key: str | None = None
    timeout: float | None = None
    parent: str | None = None
    priority: int = 0  # higher runs first, -1000..1000
    traceparent: str | None = None  # W3C trace context the workflow's runs join


MAX_PRIORITY = 1000
# Deadlock and serialization failure: nothing was written; the same call again succeeds.
TRANSIENT_SQLSTATES = ("40P01", "40001")


@dataclass(frozen=True, slots=True)
class StartResult:
    id: str
    slot: int
    status: str
    created: bool
    conflict: bool
    # The fast path: a start leased to the caller's own executor (``prefer``) is handed to
    # it here, as a claim's columns in a JSON object, instead of by NOTIFY.
    handoff: str | None = None


@dataclass(frozen=True)
class ListFilters:
    """What a listing of workflows keeps, beyond status and name, and its order."""

    newest: bool = False
    id_prefix: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    parent: str | None = None


def workflow_name(workflow: str | AnyWorkflow) -> str:
    return workflow.name if isinstance(workflow, WorkflowDef) else workflow


async def start_many_on(
    conn: asyncpg.Connection | asyncpg.Pool, requests: Sequence[StartRequest]
) -> list[StartResult]:
    """One round trip: validate, encode and start a batch on one shard (all or nothing:
    a request with a problem raises its error and nothing is started)."""
    outcomes = await _start(conn, requests, partial=False)
    for outcome in outcomes:
        if isinstance(outcome, ShardflowError):
            raise outcome
    return [o for o in outcomes if isinstance(o, StartResult)]


async def start_each_on(
    conn: asyncpg.Connection | asyncpg.Pool,
    requests: Sequence[StartRequest],
    prefer: str | None = None,
) -> list[StartResult | ShardflowError]:
    """One round trip: start every request of the batch that has no problem; those that
    have one (a slot that moved, an unknown name) come back as their error, started nowhere.
    ``prefer``: an executor of this process that takes what it can (StartResult.handoff)."""
    return await _start(conn, requests, partial=True, prefer=prefer)


async def _start(
    conn: asyncpg.Connection | asyncpg.Pool,
    requests: Sequence[StartRequest],
    *,
    partial: bool,
    prefer: str | None = None,
) -> list[StartResult | ShardflowError]:
    for r in requests:
        check_priority(r.priority)
    inputs = [codec.dumps(r.input, f"the input of workflow {r.workflow}") for r in requests]
    ids = [r.id if r.id is not None else uuid.uuid4().hex for r in requests]
    names = [r.workflow for r in requests]
    try:
        rows = await conn.fetch(
            query("workflow_start_many"),
            ids,
            names,
            inputs,
            [r.routing_key for r in requests],
            [r.parent for r in requests],
            [r.timeout for r in requests],
            [r.priority for r in requests],
            partial,
            [r.traceparent for r in requests],
            prefer,
        )
        results: list[StartResult | ShardflowError] = [
            _result(row)
            if row["problem"] is None
            else start_problem(ids[i], names[i], row["problem"])
            for i, row in enumerate(rows)
        ]
        if not partial and any(isinstance(r, ShardflowError) for r in results):
            return results  # nothing was started
        racing = [
            i for i, r in enumerate(results) if isinstance(r, StartResult) and r.status is None
        ]
        if racing:
            again = await conn.fetch(
                query("workflow_start_recheck"),
                [ids[i] for i in racing],
                [names[i] for i in racing],
                [inputs[i] for i in racing],
            )
            by_id = {row["id"]: _result(row) for row in again}
            for i in racing:
                results[i] = by_id[ids[i]]
    except Exception as exc:
        raise translate(exc) from exc
    return results


def _result(row: asyncpg.Record) -> StartResult:
    return StartResult(
        row["id"], row["slot"], row["status"], row["created"], row["conflict"], row["handoff"]
    )


def start_problem(workflow_id: str, name: str, problem: str) -> ShardflowError:
    """The error of a start that shardflow.start_workflows reported a problem for (the
    same words as its SQL twin, shardflow.raise_start_problem)."""
    if problem == "unknown_workflow":
        return UnknownWorkflowError(
            f"unknown workflow {name!r}: no executor of this shard has registered it"
        )
    if problem == "id_elsewhere":
        return IdElsewhereError(
            f"workflow ID {workflow_id!r} is taken by a workflow placed by another routing key"
        )
    if problem == "slot_moved":
        return SlotMovedError(
            f"the slot of workflow {workflow_id!r} is not owned by this shard (moved or "
            "moving); refresh the slot map and retry"
        )
    rule = "it must be 1 to 200 characters without control characters"
    return InvalidWorkflowIdError(f"{problem.replace('_', ' ')} of {workflow_id[:40]!r}: {rule}")


def check_priority(priority: object) -> None:
    if (
        not isinstance(priority, int)
        or isinstance(priority, bool)
        or not -MAX_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise BadRequestError(
            f"a priority is a whole number from {-MAX_PRIORITY} to {MAX_PRIORITY}, not {priority!r}"
        )


def translate(exc: BaseException) -> BaseException:
    mapped = from_postgres(exc)
    if mapped is not None:
        return mapped
    if getattr(exc, "sqlstate", None) in TRANSIENT_SQLSTATES:
        return OverloadedError(f"a concurrent change collided with this one; retry: {exc}")
    if (getattr(exc, "sqlstate", None) or "").startswith("22"):
        # A data exception: a value Postgres cannot store (e.g. a NUL character in text).
        return SerializationError(f"a value cannot be stored: {getattr(exc, 'message', exc)}")
    if is_unavailable(exc):
        return ShardUnavailableError(f"the shard is unavailable: {exc!r}")
    return exc


class ShardClient:
    def __init__(self, pool: asyncpg.Pool, dsn: str, node_dsn: str | None = None) -> None:
        self.pool = pool
        self.results = ResultWaiters(pool, dsn, node_dsn or dsn)

    @classmethod
    async def connect(
        cls, dsn: str, *, pool_size: int = 4, min_size: int = 1, connect_timeout: float = 60.0
    ) -> ShardClient:
        """A pool on the shard (on Citus, on its schema's node: shardflow/infra/placement.py);
        ``min_size=0`` connects lazily (a down shard fails per call)."""
        node_dsn = dsn
        try:
            node_dsn = await placement.resolve(dsn, timeout=min(connect_timeout, 10.0))
        except Exception as exc:
            if min_size > 0 or not is_unavailable(exc):
                raise translate(exc) from exc
            # lazily: through the DSN as given until the waiters' watcher finds the node
        try:
            pool = await create_pool(
                node_dsn, min_size=min_size, max_size=pool_size, timeout=connect_timeout
            )
        except Exception as exc:
            raise translate(exc) from exc
        return cls(pool, dsn, node_dsn)

    async def close(self) -> None:
        await self.results.close()
        await close_pool(self.pool)

    async def __aenter__(self) -> ShardClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def start(
        self,
        workflow: str | AnyWorkflow,
        input: Any = None,
        *,
        id: str | None = None,
        routing_key: str | None = None,
        timeout: float | None = None,
        priority: int = 0,
        conn: asyncpg.Connection | None = None,
        traceparent: str | None = None,
    ) -> str:
        """Start a workflow; idempotent by ``id`` (same input: the existing instance).
        ``priority``: higher is claimed first (-1000..1000, default 0). ``traceparent``:
        the W3C trace its runs join (default: the current OpenTelemetry span's, if any)."""
        request = StartRequest(
            workflow_name(workflow),
            input,
            id,
            routing_key,
            timeout,
            priority=priority,
            traceparent=tracing.parse_traceparent(traceparent or tracing.current_traceparent()),
        )
        (result,) = await start_many_on(conn or self.pool, [request])
        if result.conflict:
            raise WorkflowConflictError(
                f"workflow ID {result.id!r} already exists with another name or input; "
                "use a new ID to start another instance",
                id=result.id,
            )
        return result.id

    async def start_many(
        self, requests: Sequence[StartRequest], *, conn: asyncpg.Connection | None = None
    ) -> list[StartResult]:
        return await start_many_on(conn or self.pool, requests)

    async def status(self, workflow_id: str) -> dict[str, Any]:
        text = await self._fetchval(query("workflow_status"), workflow_id)
        if text is None:
            raise WorkflowNotFoundError(f"unknown workflow ID {workflow_id!r}", id=workflow_id)
        doc: dict[str, Any] = codec.loads(text)
        return doc

    async def ping(self) -> bool:
        """Whether the shard answers a query now."""
        try:
            await self.pool.fetchval(query("ping"))
        except Exception:
            return False
        return True

    async def locate(self, workflow_id: str) -> str | None:
        """The workflow's status if this shard holds it, else None."""
        value = await self._fetchval(query("workflow_locate"), workflow_id)
        return None if value is None else str(value)

    # -- the directory: an ID's home shard knows where a workflow placed by another key is
    async def directory_claim(self, workflow_id: str, routing_key: str) -> str:
        """Reserve the ID (this is its home shard) for a workflow placed by
        ``routing_key``; the routing key that holds the ID now (the ID itself: a workflow
        of that ID lives here under its own key)."""
        return str(await self._fetchval(query("directory_claim"), workflow_id, routing_key))

    async def directory_holder(self, workflow_id: str) -> str | None:
        """The routing key that placed the ID's workflow, when it is not the ID."""
        value = await self._fetchval(query("directory_holder"), workflow_id)
        return None if value is None else str(value)

    async def directory_move(self, workflow_id: str, old: str, new: str, age: float) -> bool:
        """Hand the ID's row from ``old`` to ``new`` if it is older than ``age`` seconds."""
        sql = query("directory_move")
        return bool(await self._fetchval(sql, workflow_id, old, new, age))

    async def directory_release(self, workflow_id: str, old: str, age: float) -> bool:
        """Drop the ID's row held by ``old`` if it is older than ``age`` seconds."""
        sql = query("directory_release")
        return await self._fetchval(sql, workflow_id, old, age) is not None

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        try:
            return await self.pool.fetchval(sql, *args)
        except Exception as exc:
            raise translate(exc) from exc

    async def list_page(
        self,
        *,
        after: tuple[datetime, str] | None,
        status: str | None,
        workflow: str | None,
        limit: int,
        filters: ListFilters | None = None,
    ) -> list[tuple[datetime, str, dict[str, Any]]]:
        """A page of (created_at, id, status document) ordered by (created_at, id), or
        newest first (``filters.newest``): the page after (before) the cursor."""
        f = filters or ListFilters()
        start = datetime.max.replace(tzinfo=UTC) if f.newest else datetime.fromtimestamp(0, UTC)
        created, wid = after or (start, "\uffff" if f.newest else "")
        sql = query("workflow_list_newest" if f.newest else "workflow_list")
        rows = await self._fetch(
            sql, created, wid, status, workflow, limit, f.id_prefix, f.created_after,
            f.created_before, f.parent,
        )  # fmt: skip
        docs = {
            r["id"]: r["doc"]
            for r in await self._fetch(query("workflow_docs"), [r["id"] for r in rows])
        }
        # A workflow collected between the two statements has no document: left out.
        return [
            (r["created_at"], r["id"], codec.loads(docs[r["id"]]))
            for r in rows
            if docs.get(r["id"]) is not None
        ]

    async def counts(self, workflow: str | None = None) -> dict[str, int]:
        """Workflows by status on this shard."""
        rows = await self._fetch(query("workflow_counts"), workflow)
        return {r["status"]: int(r["n"]) for r in rows}

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self.pool.fetch(sql, *args))
        except Exception as exc:
            raise translate(exc) from exc

    async def cancel(self, workflow_id: str) -> str:
        return str(await self._fetchval(query("workflow_cancel"), workflow_id))

    async def retry(self, workflow_id: str) -> str:
        """Run a failed workflow again from its failed step (completed steps replay)."""
        return str(await self._fetchval(query("workflow_retry"), workflow_id))

    async def send_event(
        self, workflow_id: str, name: str, payload: Any = None, *, dedup_id: str | None = None
    ) -> bool:
        """Deliver an event; False when ``dedup_id`` was already delivered."""
        text = codec.dumps(payload, f"the payload of event {name}")
        sql = query("event_send")
        return bool(await self._fetchval(sql, workflow_id, name, text, dedup_id))

    async def result(self, workflow_id: str, timeout: float | None = None) -> Any:
        """The workflow's output once it finishes; raises for failed or cancelled ones."""
        outcome = await self.wait(workflow_id, timeout)
        error = codec.loads(outcome["error"])
        if outcome["status"] == "failed":
            raise WorkflowFailedError(
                f"workflow {workflow_id} failed: {error.get('type')}: {error.get('message')}", error
            )
        if outcome["status"] == "cancelled":
            raise WorkflowCancelledError(f"workflow {workflow_id} was cancelled", error)
        return codec.loads(outcome["output"])

    async def wait(self, workflow_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the workflow to finish; its {id, status, output, error} (JSON text)."""
        return await self.results.wait(workflow_id, timeout)


__all__ = ["ShardClient", "ShardflowError", "StartRequest", "StartResult"]
