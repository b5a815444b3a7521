"""Group commit of checkpoints and state changes from many concurrent workflows.

A submit joins the pending batch; a flush starts at once when none is in flight
(so low load adds no latency) and whatever arrives meanwhile goes in the next
one, like Postgres's own group commit. One flush is one statement.

The executor's claims go through here too: while a flush is in flight, a claim rides
the next one (one statement and one commit for both, where a busy executor otherwise
sent a claim of its own for every batch of starts); when none is, or the next flush
holds a record whose write could touch the rows a claim takes (a child finishing, which
signals its parent; a suspension, which queues a ready entry), the claim goes alone.
"""

from __future__ import annotations

import asyncio
import logging
import time

from shardflow.infra.errors import ShardUnavailableError
from shardflow.metrics.shard import ShardMetrics
from shardflow.shard.faults import Faults
from shardflow.shard.model import ClaimedWorkflow, ClaimRequest, FlushResult, WorkflowRecord
from shardflow.shard.store import ShardStore
from shardflow.shard.waiters import settle

log = logging.getLogger("shardflow.committer")

_TURNS = 3
_Claim = tuple[ClaimRequest, "asyncio.Future[list[ClaimedWorkflow] | None]"]


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
        self._claim: _Claim | None = None
        # Workflows a claim took for a caller that was cancelled while it waited for its
        # flush (the executor stopping): the executor gives them back.
        self.orphans: list[ClaimedWorkflow] = []

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

    async def claim(self, request: ClaimRequest) -> list[ClaimedWorkflow]:
        """Claim with the next flush when one is in flight (its workflows' next records
        make the next flush), else on its own at once. One claim at a time (the
        executor's claim loop makes them)."""
        if self._task is not None and self._claim is None:
            future: asyncio.Future[list[ClaimedWorkflow] | None]
            future = asyncio.get_running_loop().create_future()
            self._claim = (request, future)
            try:
                claimed = await asyncio.shield(future)
            except asyncio.CancelledError:
                future.add_done_callback(self._orphaned)
                raise
            if claimed is not None:
                self._metrics.claims.labels(self._metrics.shard, "with_flush").inc()
                return claimed
        self._metrics.claims.labels(self._metrics.shard, "alone").inc()
        return await self._store.workflow_claim_batch(request)

    def _orphaned(self, future: asyncio.Future[list[ClaimedWorkflow] | None]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.orphans.extend(future.result() or [])

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
                claim, self._claim = self._claim, None
                await self._flush(list(batch.values()), claim)
                if self._claim is not None and not self._pending:
                    # A claim waits for the next flush: let the workflows this one released
                    # run to their next records (their wake-ups take two turns of the loop).
                    for _ in range(_TURNS):
                        await asyncio.sleep(0)
        finally:
            self._task = None
            if self._claim is not None:
                settle(self._claim[1], None)  # no flush to ride: the claim goes alone
                self._claim = None

    async def _flush(self, batch: list[WorkflowRecord], claim: _Claim | None) -> None:
        if claim is not None and not all(r.plain for r in batch):
            settle(claim[1], None)  # the claim goes alone
            claim = None
        started = time.perf_counter()
        try:
            await self._faults.point("before_checkpoint_commit")
            applied, claimed = await self._store.checkpoint_flush(
                batch, None if claim is None else claim[0]
            )
            await self._faults.point("after_checkpoint_commit")
        except Exception as exc:
            log.warning("event=flush_failed records=%d error=%r", len(batch), exc)
            futures = [r.future for r in batch] + ([] if claim is None else [claim[1]])
            for future in futures:
                if future is not None:
                    settle(future, ShardUnavailableError(f"checkpoint write failed: {exc}"))
            return
        if claim is not None:
            settle(claim[1], claimed)
        self._metrics.checkpoint_batch_size.observe(len(batch))
        self._metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        fenced = 0
        for record in batch:
            cancel = applied.get(record.id)
            if cancel is None:
                fenced += 1
                log.warning("event=fenced_write workflow=%s epoch=%d", record.id, record.epoch)
            if record.future is not None:
                settle(record.future, FlushResult(cancel is not None, bool(cancel)))
        if fenced:
            self._metrics.fenced_writes.inc(fenced)
