"""The shard's storage interface: one narrow, batched set of noun-verb methods over asyncpg."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from shardflow.infra.pool import quiet_target
from shardflow.shard import codec
from shardflow.shard.model import (
    ClaimedWorkflow,
    ClaimRequest,
    History,
    RecordedStep,
    WorkflowRecord,
)
from shardflow.shard.queries import query
from shardflow.shard.sdk import AnyWorkflow

_flush_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


_NO_CLAIM: tuple[Any, ...] = ("", 0, 0.0, None, None)


def _claim_args(claim: ClaimRequest) -> tuple[Any, ...]:
    return (claim.owner, claim.limit, claim.lease, claim.names, claim.versions)


def flush_payload(records: Sequence[WorkflowRecord]) -> str:
    """The one JSON parameter of ``checkpoint_flush``: the records with their step rows.

    Outputs and errors are already JSON text and go in as strings (the query casts them);
    times go in ISO 8601 with their offset, exact to the microsecond."""
    return _flush_encoder.encode(
        [
            {
                "id": r.id,
                "epoch": r.epoch,
                "status": r.status,
                "output": r.output,
                "error": r.error,
                "run_at": _iso(r.run_at),
                "next_seq": r.next_seq,
                "seen_signal": r.seen_signal,
                "parent": r.parent,
                "steps": [
                    {
                        "seq": s.seq,
                        "name": s.name,
                        "status": s.status,
                        "output": s.output,
                        "error": s.error,
                        "attempts": s.attempts,
                        "started_at": _iso(s.started_at),
                    }
                    for s in r.steps
                ],
            }
            for r in records
        ]
    )


def flush_args(
    records: Sequence[WorkflowRecord], claim: ClaimRequest | None = None
) -> tuple[Any, ...]:
    """The parameters of ``checkpoint_flush``: the records and the claim riding it, if any."""
    return (flush_payload(records), *(_NO_CLAIM if claim is None else _claim_args(claim)))


class ShardStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        # The executor's liveness connection, which LISTENs for its hand-offs: small
        # flushes run on it while it is up (see _flusher).
        self.listener: asyncpg.Connection | None = None
        # On Citus, statements that Citus cannot plan whole go record by record
        # (docs/citus.md); set by whoever opened the pool (placement.on_citus).
        self.citus = False

    def _flusher(self, records: int) -> asyncpg.Connection | asyncpg.Pool:
        """Where a flush of ``records`` goes (the committer sends one at a time)."""
        return quiet_target(self.listener, self.pool, records)

    async def executor_register(
        self, owner: str, lock_key: int, lease: float, lock_server: str
    ) -> None:
        await self.pool.execute(
            query("executor_register"),
            owner,
            lock_key,
            lease,
            socket.gethostname(),
            os.getpid(),
            lock_server,
        )

    async def executor_relock(self, owner: str, lock_server: str) -> bool:
        return await self.pool.fetchval(query("executor_relock"), owner, lock_server) is not None

    async def executor_heartbeat(self, owner: str, lease: float) -> bool:
        return await self.pool.fetchval(query("executor_heartbeat"), owner, lease) is not None

    async def executor_handoff(
        self, owner: str, kinds: Sequence[str], seconds: float, room: int = 0
    ) -> None:
        await self.pool.execute(query("executor_handoff"), owner, list(kinds), seconds, room)

    async def workflows_leased_to(self, owner: str, idle: float) -> list[tuple[str, int]]:
        rows = await self.pool.fetch(query("workflows_leased_to"), owner, idle)
        return [(row["id"], row["lease_epoch"]) for row in rows]

    async def executor_unregister(self, owner: str) -> None:
        await self.pool.execute(query("executor_unregister"), owner)

    async def registry_add(self, names: Sequence[tuple[str, str, float | None]]) -> None:
        await self.pool.execute(
            query("registry_add"),
            [n for n, _, _ in names],
            [v for _, v, _ in names],
            [t for _, _, t in names],
        )

    async def limits_set(self, definitions: Sequence[AnyWorkflow]) -> None:
        """Record the concurrency limits the code declares; drop those it no longer does."""
        limited = [d for d in definitions if d.max_running or d.max_running_per_shard]
        await self.pool.execute(
            query("limits_set"),
            [d.name for d in limited],
            [d.max_running_per_shard for d in limited],
            [d.max_running for d in limited],
        )
        free = [d.name for d in definitions if d not in limited]
        await self.pool.execute(query("limits_clear"), free)

    async def reclaim_dead(self, owner: str, max_attempts: int) -> int:
        return int(await self.pool.fetchval(query("reclaim_dead"), owner, max_attempts))

    async def sql_workflows(
        self, known: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """SQL-defined workflows: every version of them but the ``known`` ones."""
        rows = await self.pool.fetch(query("sql_workflows"), [f"{n} {v}" for n, v in known])
        return [(r["name"], r["version"], json.loads(r["definition"])) for r in rows]

    async def registry_kinds(self) -> set[tuple[str, str]]:
        """Every (name, version) registered on the shard, by any executor."""
        return {(r["name"], r["version"]) for r in await self.pool.fetch(query("registry_kinds"))}

    async def workflow_claim_batch(self, request: ClaimRequest) -> list[ClaimedWorkflow]:
        """Claim due workflows: any kind (``request.kinds`` None), or only those in it."""
        rows = await self.pool.fetch(query("workflow_claim_batch"), *_claim_args(request))
        return [ClaimedWorkflow.decode(row) for row in rows]

    async def history_for(self, claimed: Sequence[ClaimedWorkflow]) -> dict[str, History]:
        """Recorded steps and events of the claimed workflows that have any."""
        histories = {c.id: History() for c in claimed}
        with_steps = [c.id for c in claimed if c.next_seq > 0]
        with_events = [c.id for c in claimed if c.signal_seq > 0]
        if with_steps:
            for row in await self.pool.fetch(query("steps_for_workflows"), with_steps):
                histories[row["workflow_id"]].steps[row["seq"]] = RecordedStep(
                    row["seq"],
                    row["name"],
                    row["status"],
                    row["output"],
                    row["error"],
                    row["attempts"],
                )
        if with_events:
            for row in await self.pool.fetch(query("events_for_workflows"), with_events):
                events = histories[row["workflow_id"]].events
                events.setdefault(row["name"], []).append(codec.loads(row["payload"]))
        return histories

    async def checkpoint_flush(
        self, records: Sequence[WorkflowRecord], claim: ClaimRequest | None = None
    ) -> tuple[dict[str, bool], list[ClaimedWorkflow]]:
        """Group-commit ``records`` and, with them, ``claim``: {applied workflow ID: cancel
        requested} and the workflows claimed. The caller keeps out of a flush that claims
        any record that is not plain (see the query).

        Without a claim and with plain records only (nearly every flush), the lean
        ``checkpoint_flush_plain`` does the same writes, and ``checkpoint_flush_one`` for
        a single record."""
        if self.citus:
            rows = await self._flusher(len(records)).fetch(
                query("checkpoint_flush_each"), *flush_args(records, claim)
            )
        elif claim is None and all(r.plain for r in records):
            lean = "checkpoint_flush_one" if len(records) == 1 else "checkpoint_flush_plain"
            rows = await self._flusher(len(records)).fetch(query(lean), flush_payload(records))
            return {row["id"]: row["cancel_requested"] for row in rows}, []
        else:
            rows = await self._flusher(len(records)).fetch(
                query("checkpoint_flush"), *flush_args(records, claim)
            )
        applied = {row["id"]: row["cancel_requested"] for row in rows if not row["claimed"]}
        claimed = [ClaimedWorkflow.decode(row) for row in rows if row["claimed"]]
        return applied, claimed

    async def workflow_release_many(self, items: Sequence[tuple[str, int]]) -> int:
        return int(
            await self.pool.fetchval(
                query("workflow_release_each" if self.citus else "workflow_release_many"),
                [i for i, _ in items],
                [e for _, e in items],
            )
        )

    async def gc_delete_batch(self, retention: float, limit: int, lock_key: int) -> int | None:
        """Delete one batch; None when another executor holds the GC lock."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(query("gc_try_lock"), lock_key):
                return None
            rows = await conn.fetch(query("gc_delete_batch"), retention, limit)
            return len(rows)
