"""Waiting for workflows to finish: one LISTEN connection per shard serves every waiter.

Completion NOTIFYs carry the outcomes (``[id, status, output, error]`` each); an empty
payload means "read them back". A new waiter is normally answered by reading its
outcome once (it may have finished before the waiter existed), then by the NOTIFYs. A
workflow this process is about to start while its listener is connected needs no such
read: its completion cannot be missed (``expect``). Its outcome is kept for a while if
it arrives before anyone waits. Every waiter is also re-read once a second,
so a lost NOTIFY costs at most that second, never an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from typing import Any

import asyncpg

from shardflow.infra import placement
from shardflow.infra import pool as shard_pool
from shardflow.infra.dbfaults import is_unavailable
from shardflow.infra.errors import ResultTimeoutError, WorkflowNotFoundError
from shardflow.shard.model import FINISHED
from shardflow.shard.queries import query

# Seconds an expected workflow's outcome is kept for a wait that may come.
KEEP_EXPECTED = 10.0


def settle(fut: asyncio.Future[Any], outcome: Any) -> None:
    """Answer a future with a value or an error, unless it has its answer already."""
    if fut.done():
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)


class ResultWaiters:
    def __init__(self, pool: asyncpg.Pool, dsn: str, node_dsn: str | None = None) -> None:
        self.pool = pool
        self._placement = placement.Follower(dsn, node_dsn)  # on Citus: the schema's node
        self._retiring: set[asyncio.Task[None]] = set()
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._notified = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        # Started here while listening: ID -> (when, its outcome once it arrived, or None).
        self._expected: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self.reads = 0  # outcome read-backs (one query each)

    def listening(self) -> bool:
        """Whether the LISTEN connection is up (when not, the watcher starts, so that
        later starts can be expected)."""
        if self._conn is None or self._conn.is_closed():
            self._ensure_watcher()
            return False
        return True

    def statements(self, batch: int) -> asyncpg.Connection | asyncpg.Pool:
        """Where this process's start of ``batch`` workflows goes (shard.pool.quiet_target),
        for one caller whose statements are serial (the shard's StartBatcher); this
        watcher runs none on the LISTEN connection."""
        return shard_pool.quiet_target(self._conn, self.pool, batch)

    def expect(self, ids: Iterable[str]) -> None:
        """Workflows about to be created here: if the listener is up, their completions
        will be heard (a new connection forgets every expectation). Call it before
        sending their start, so that no completion can come first, then ``forget`` the
        ones the start did not create."""
        if not self.listening():
            return
        now = time.monotonic()
        for wid in ids:
            self._expected[wid] = (now, None)

    def forget(self, ids: Iterable[str]) -> None:
        """Expect these no more (the start did not create them): waits read them back."""
        for wid in ids:
            self._expected.pop(wid, None)

    async def wait(self, workflow_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the workflow to finish; its {id, status, output, error} (JSON text)."""
        expected = self._expected.pop(workflow_id, None)
        if expected is not None and expected[1] is not None:
            return expected[1]
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(workflow_id, []).append(fut)
        self._ensure_watcher()
        if expected is None:
            self._notified.set()  # read it back: it may have finished before we listened
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise ResultTimeoutError(
                f"workflow {workflow_id} did not finish within {timeout} s", id=workflow_id
            ) from None
        finally:
            waiters = self._waiters.get(workflow_id, [])
            if fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[workflow_id]

    async def close(self) -> None:
        tasks = [*self._retiring, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _ensure_watcher(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        """One LISTEN connection and one batched query per wake-up serve every waiter."""
        try:
            while True:
                if self._conn is None or self._conn.is_closed():
                    self._expected.clear()  # what the old connection missed is unknown
                    self._conn = await self._listen()
                self._notified.clear()
                if self._waiters:
                    await self._check(list(self._waiters))
                self._forget(time.monotonic() - KEEP_EXPECTED)
                await self._follow_schema()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._notified.wait(), 1.0)
        finally:
            conn, self._conn = self._conn, None
            await shard_pool.close_connection(conn)

    async def _follow_schema(self) -> None:
        """On Citus, every CHECK_SECONDS: when the schema moved, the pool and the LISTEN
        connection move to its node (the next turn of the watch loop listens there)."""
        try:
            target = await self._placement.moved(self.pool)
        except Exception as exc:
            if is_unavailable(exc):
                return
            raise
        if target is not None:
            self._placement.node = target
            await shard_pool.repoint(self.pool, target)
            conn, self._conn = self._conn, None  # a start may still run on it: closed later
            shard_pool.retire(conn, self._retiring)

    async def _listen(self) -> asyncpg.Connection | None:
        conn = None
        try:
            conn = await shard_pool.connect(self._placement.node)
            await conn.add_listener("shardflow_done", self._on_done)
        except Exception as exc:
            if conn is not None:
                conn.terminate()
            if not is_unavailable(exc):
                raise
            return None
        return conn

    def _forget(self, before: float) -> None:
        """Drop expectations older than ``before`` (in insertion order, so oldest first)."""
        while self._expected:
            wid, (at, _) = next(iter(self._expected.items()))
            if at >= before:
                return
            del self._expected[wid]

    def _on_done(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        """A completion NOTIFY: its payload lists the outcomes ([id, status, output,
        error] each); an empty or unreadable one means 'read them back'."""
        try:
            outcomes = json.loads(payload) if isinstance(payload, str) and payload else None
        except ValueError:
            outcomes = None
        if not isinstance(outcomes, list):
            self._expected.clear()  # their outcomes must be read back now
            self._notified.set()
            return
        for wid, status, output, error in outcomes:
            self.resolve({"id": wid, "status": status, "output": output, "error": error})

    def resolve(self, outcome: dict[str, Any]) -> None:
        """A workflow's outcome ({id, status, output, error}), from a completion NOTIFY or,
        in memory, from an executor of this process that wrote it (the fast path)."""
        wid = outcome["id"]
        if wid in self._waiters:
            self._settle(wid, outcome)
        elif wid in self._expected:
            self._expected[wid] = (self._expected[wid][0], outcome)

    def _settle(self, workflow_id: str, outcome: dict[str, Any] | BaseException) -> None:
        """Answer every waiter of a workflow with its outcome (or an error)."""
        for fut in self._waiters.pop(workflow_id, []):
            settle(fut, outcome)

    async def _check(self, ids: list[str]) -> None:
        self.reads += 1
        try:
            rows = await self.pool.fetch(query("workflow_outcomes"), ids)
        except Exception as exc:
            if is_unavailable(exc):
                return
            raise
        found = set()
        for row in rows:
            found.add(row["id"])
            if row["status"] in FINISHED:
                self._settle(row["id"], dict(row))
        for wid in set(ids) - found:  # not on this shard (or never started)
            self._settle(wid, WorkflowNotFoundError(f"unknown workflow ID {wid!r}", id=wid))
