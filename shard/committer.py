"""Group commit of checkpoints and state changes from many concurrent workflows.

A submit joins the pending batch; a flush starts at once when none is in flight
(so low load adds no latency) and whatever arrives meanwhile goes in the next
one, like Postgres's own group commit. One flush is one statement.
"""

from __future__ import annotations

import asyncio
import logging
import time

from metrics.shard import ShardMetrics
from shard.errors import ShardUnavailableError
from shard.faults import Faults
from shard.model import FlushResult, WorkflowRecord
from shard.store import ShardStore

log = logging.getLogger("shardflow.committer")


class GroupCommitter:
    def __init__(
        self, store: ShardStore, faults: Faults, metrics: ShardMetrics, max_batch: int = 2000
    ) -> None:
        self._store = store
        self._faults = faults
        self._metrics = metrics
        self._max_batch = max_batch
        self._pending: dict[str, WorkflowRecord] = {}
        self._task: asyncio.Task[None] | None = None

    def enqueue(self, record: WorkflowRecord) -> asyncio.Future[FlushResult]:
        """Add to the next flush (merged with the workflow's record already waiting there)."""
        pending = self._pending.get(record.id)
        if pending is not None and pending.epoch == record.epoch:
            pending.merge(record)
        else:
            record.future = asyncio.get_running_loop().create_future()
            self._pending[record.id] = record
            pending = record
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        assert pending.future is not None
        return pending.future

    def waiting(self, workflow_id: str, epoch: int) -> bool:
        """Whether a record of this workflow waits for the next flush (so more can merge)."""
        pending = self._pending.get(workflow_id)
        return pending is not None and pending.epoch == epoch

    async def submit(self, record: WorkflowRecord) -> FlushResult:
        return await asyncio.shield(self.enqueue(record))

    async def drain(self) -> None:
        """Wait until everything submitted so far is flushed."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        try:
            while self._pending:
                if len(self._pending) <= self._max_batch:
                    batch, self._pending = self._pending, {}
                else:
                    keys = list(self._pending)[: self._max_batch]
                    batch = {k: self._pending.pop(k) for k in keys}
                await self._flush(list(batch.values()))
        finally:
            self._task = None

    async def _flush(self, batch: list[WorkflowRecord]) -> None:
        started = time.perf_counter()
        try:
            await self._faults.point("before_checkpoint_commit")
            applied = await self._store.checkpoint_flush(batch)
            await self._faults.point("after_checkpoint_commit")
        except Exception as exc:
            log.warning("event=flush_failed records=%d error=%r", len(batch), exc)
            for record in batch:
                if record.future is not None and not record.future.done():
                    record.future.set_exception(
                        ShardUnavailableError(f"checkpoint write failed: {exc}")
                    )
            return
        self._metrics.checkpoint_batch_size.observe(len(batch))
        self._metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        fenced = 0
        for record in batch:
            cancel = applied.get(record.id)
            if cancel is None:
                fenced += 1
                log.warning("event=fenced_write workflow=%s epoch=%d", record.id, record.epoch)
            if record.future is not None and not record.future.done():
                record.future.set_result(FlushResult(cancel is not None, bool(cancel)))
        if fenced:
            self._metrics.fenced_writes.inc(fenced)
