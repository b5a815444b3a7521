"""shardflow.start_workflows runs a batch of one statement by statement (start_one) and a
larger batch as one query: both must answer and write the same for every kind of start."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from shardflow.shard.client import ShardClient
from shardflow.shard.store import ShardStore

START = (
    "SELECT id, slot, status, created, conflict, problem FROM shardflow.start_workflows("
    "$1::text[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::double precision[],"
    " $7::integer[], true)"
)
WRITTEN = """SELECT w.status, w.lease_owner, w.lease_epoch, w.slot, w.routing_key, w.name,
       w.version, w.input, w.parent, w.priority, w.deadline - w.created_at AS timeout,
       (SELECT r.priority FROM shardflow.ready r WHERE r.workflow_id = w.id) AS queued
FROM shardflow.workflows w WHERE w.id = $1"""
OPEN = """INSERT INTO shardflow.executors (owner, lock_key, lease_until, kinds, handoff_until)
VALUES ('stand-in', 9, now() + interval '1 minute', '{w3@1}', now() + interval '1 minute')"""

# (id, name, input, routing key, parent, timeout, priority)
Row = tuple[Any, str, Any, str | None, str | None, float | None, int | None]
CASES: dict[str, Row] = {
    "new": ("fresh", "w3", {"a": 1}, None, None, None, None),
    "new with every option": ("opts", "w3", [1, 2], "family-7", "dad", 12.5, 40),
    "repeat, same input": ("taken", "w3", {"a": 1}, None, None, None, None),
    "repeat, other input": ("taken", "w3", {"a": 2}, None, None, None, None),
    "repeat, other name": ("taken", "other", {"a": 1}, None, None, None, None),
    "unknown workflow": ("nobody", "ghost", 1, None, None, None, None),
    "unknown workflow, taken ID": ("taken", "ghost", 1, None, None, None, None),
    "control character in the ID": ("bad\nid", "w3", 1, None, None, None, None),
    "empty ID": ("", "w3", 1, None, None, None, None),
    "routing key too long": ("long-key", "w3", 1, "k" * 201, None, None, None),
    "slot moving": ("moving", "w3", 1, "on-the-move", None, None, None),
    "input too large to hand off": ("big", "w3", "x" * 3000, None, None, None, None),
}


async def _start(conn: asyncpg.Connection, rows: list[Row]) -> list[dict[str, Any]]:
    columns = list(zip(*rows, strict=True))
    inputs = [json.dumps(v) for v in columns[2]]
    found = await conn.fetch(START, columns[0], columns[1], inputs, *columns[3:])
    return [dict(r) for r in found]


async def _try(conn: asyncpg.Connection, rows: list[Row]) -> tuple[dict[str, Any], Any]:
    """The first row's answer and what it wrote, then undone."""
    tx = conn.transaction()
    await tx.start()
    try:
        answer = (await _start(conn, rows))[0]
        written = await conn.fetchrow(WRITTEN, rows[0][0])
        return answer, None if written is None else dict(written)
    finally:
        await tx.rollback()


@pytest.mark.parametrize("handoff", [False, True], ids=["queued", "handed off"])
async def test_a_start_alone_answers_and_writes_as_in_a_batch(
    client: ShardClient, dsn: str, handoff: bool
):
    await ShardStore(client.pool).registry_add([("w3", "1", 30.0), ("other", "1", None)])
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO shardflow.slots (slot, epoch) SELECT g, 1 FROM generate_series(0, 1023) g;"
            "UPDATE shardflow.slots SET state = 'moving'"
            " WHERE slot = shardflow.slot_of('on-the-move', 1024)"
        )
        if handoff:
            await conn.execute(OPEN)
        await _start(conn, [("taken", "w3", {"a": 1}, None, None, None, None)])
        filler: Row = ("filler", "w3", 0, None, None, None, None)
        for case, row in CASES.items():
            alone = await _try(conn, [row])
            in_batch = await _try(conn, [row, filler])
            assert alone == in_batch, case
        # What the cases cover: each answer below came from both paths alike.
        answers = {case: (await _try(conn, [row]))[0] for case, row in CASES.items()}
        assert answers["new"]["created"] and answers["new"]["problem"] is None
        assert answers["new"]["status"] == ("running" if handoff else "pending")
        assert answers["input too large to hand off"]["status"] == "pending"
        assert not answers["repeat, same input"]["created"]
        assert not answers["repeat, same input"]["conflict"]
        assert answers["repeat, other input"]["conflict"]
        assert answers["repeat, other name"]["conflict"]
        assert answers["unknown workflow"]["problem"] == "unknown_workflow"
        assert answers["control character in the ID"]["problem"] == "invalid_id"
        assert answers["empty ID"]["problem"] == "invalid_id"
        assert answers["routing key too long"]["problem"] == "invalid_routing_key"
        assert answers["slot moving"]["problem"] == "slot_moved"
    finally:
        await conn.close()
