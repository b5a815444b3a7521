"""Coalescing of concurrent single starts bound for one shard into one statement.

Like group commit: a start goes out at once when none is in flight, and the starts
that arrive meanwhile share the next statement (and its one NOTIFY), so load adds
no per-start round trips and low load adds no latency. The statement starts every
start it can and answers the others with their own error (unknown name, invalid ID,
a slot that moved), so one bad or moving start never fails or delays another. The
workflows it creates are expected by the shard's result waiters: a wait for one of
them needs no read-back.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

from shardflow.router.local import LocalExecutors, start_each
from shardflow.shard.client import ShardClient, StartRequest, StartResult
from shardflow.shard.waiters import settle


class StartBatcher:
    def __init__(
        self,
        client: ShardClient,
        max_batch: int = 500,
        local: LocalExecutors | None = None,
        shard_id: str = "",
    ) -> None:
        """``local``: this router's own executors (the fast path), which take the starts
        of shard ``shard_id`` they can run."""
        self._client = client
        self._local = local
        self._shard_id = shard_id
        self._max_batch = max_batch
        self._pending: list[tuple[StartRequest, asyncio.Future[StartResult]]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self, request: StartRequest) -> StartResult:
        fut: asyncio.Future[StartResult] = asyncio.get_running_loop().create_future()
        self._pending.append((request, fut))
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return await asyncio.shield(fut)

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._flush(batch)
        finally:
            self._task = None

    async def _flush(self, batch: list[tuple[StartRequest, asyncio.Future[StartResult]]]) -> None:
        requests = [r if r.id is not None else replace(r, id=uuid.uuid4().hex) for r, _ in batch]
        ids = [str(r.id) for r in requests]
        results = self._client.results
        results.expect(ids)  # before the start, so no completion comes first
        try:
            outcomes = await start_each(
                self._local, self._shard_id, results.statements(len(requests)), requests
            )
        except Exception as exc:
            results.forget(ids)
            for _, fut in batch:
                settle(fut, exc)
            return
        results.forget(
            wid
            for wid, o in zip(ids, outcomes, strict=True)
            if not (isinstance(o, StartResult) and o.created)
        )
        for (_, fut), outcome in zip(batch, outcomes, strict=True):
            settle(fut, outcome)
