"""Coalescing of concurrent single starts bound for one shard into one statement.

Like group commit: a start goes out at once when none is in flight, and the starts
that arrive meanwhile share the next statement (and its one NOTIFY), so load adds
no per-start round trips and low load adds no latency. The statement starts every
start it can and answers the others with their own error (unknown name, invalid ID,
a slot that moved), so one bad or moving start never fails or delays another.
"""

from __future__ import annotations

import asyncio

from shard.client import ShardClient, StartRequest, StartResult, settle, start_each_on


class StartBatcher:
    def __init__(self, client: ShardClient, max_batch: int = 500) -> None:
        self._client = client
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
        try:
            outcomes = await start_each_on(self._client.pool, [r for r, _ in batch])
        except Exception as exc:
            for _, fut in batch:
                settle(fut, exc)
            return
        for (_, fut), outcome in zip(batch, outcomes, strict=True):
            settle(fut, outcome)
