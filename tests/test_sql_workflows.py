"""Workflows defined in SQL: shardflow.define_workflow, run by executors that have no code
for them; steps take effect once, run in parallel, wait for events, fail and compensate."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shardflow.infra.errors import WorkflowFailedError
from shardflow.shard.client import ShardClient
from tests.cluster_fixtures import SHARDS, LiveCluster
from tests.waiting import status_becomes

TABLE = """
CREATE TABLE IF NOT EXISTS holds (order_id text PRIMARY KEY, qty integer NOT NULL);
CREATE TABLE IF NOT EXISTS charges (order_id text NOT NULL, amount numeric NOT NULL);
"""

ORDER = {
    "steps": [
        {
            "name": "reserve",
            "sql": "INSERT INTO holds VALUES ($1->>'order', ($1->>'qty')::int) "
            "RETURNING jsonb_build_object('held', qty)",
            "compensate": "DELETE FROM holds WHERE order_id = $1->>'order'",
        },
        {
            "parallel": [
                {
                    "name": "charge",
                    "sql": "INSERT INTO charges VALUES ($1->>'order', ($1->>'amount')::numeric) "
                    "RETURNING amount",
                    "retries": 0,
                },
                {"name": "quote", "sql": "SELECT ($2->'reserve'->>'held')::int * 2"},
            ]
        },
        {"wait_event": "approved", "timeout_s": 30},
        {
            "name": "check",
            "sql": "SELECT CASE WHEN ($2->'approved'->>'ok')::boolean THEN 'shipped' "
            "ELSE (1 / (($2->'approved'->>'ok')::boolean::int))::text END",  # 1/0 if refused
            "retries": 0,
        },
    ]
}


async def define(client: ShardClient, name: str, definition: Any) -> str:
    return str(
        await client.pool.fetchval(
            "SELECT shardflow.define_workflow($1, $2::jsonb)", name, json.dumps(definition)
        )
    )


@pytest.fixture
async def tables(client: ShardClient) -> None:
    await client.pool.execute(TABLE)


async def test_a_sql_workflow_runs_its_steps_once_and_waits_for_events(
    client: ShardClient, start_executor: Any, tables: None
) -> None:
    await start_executor()
    version = await define(client, "order_sql", ORDER)
    assert version.startswith("sql-")
    wid = await client.start("order_sql", {"order": "o1", "qty": 3, "amount": 9.5})
    await status_becomes(client, wid, "waiting")
    assert (await client.status(wid))["version"] == version
    assert await client.send_event(wid, "approved", {"ok": True})
    assert await client.result(wid, timeout=30) == {
        "reserve": {"held": 3},
        "charge": 9.5,
        "quote": 6,
        "approved": {"ok": True},
        "check": "shipped",
    }
    assert await client.pool.fetchval("SELECT count(*) FROM holds") == 1
    assert await client.pool.fetchval("SELECT count(*) FROM charges") == 1


async def test_a_failing_sql_step_fails_the_workflow_and_compensates(
    client: ShardClient, start_executor: Any, tables: None
) -> None:
    await start_executor()
    await define(client, "order_sql", ORDER)
    wid = await client.start("order_sql", {"order": "o2", "qty": 1, "amount": 1})
    await status_becomes(client, wid, "waiting")
    assert await client.send_event(wid, "approved", {"ok": False})  # 1 / 0 in "check"
    with pytest.raises(WorkflowFailedError):
        await client.result(wid, timeout=30)
    doc = await client.status(wid)
    assert doc["status"] == "failed"
    assert doc["compensations"] == ["sql:order_sql:undo reserve"]
    assert await client.pool.fetchval("SELECT count(*) FROM holds") == 0  # undone
    assert await client.pool.fetchval("SELECT count(*) FROM charges") == 1  # no undo given


async def test_a_running_instance_keeps_its_definition_when_redefined(
    client: ShardClient, start_executor: Any, tables: None
) -> None:
    first = {"steps": [{"wait_event": "go"}, {"name": "v", "sql": "SELECT 'first'"}]}
    second = {"steps": [{"wait_event": "go"}, {"name": "v", "sql": "SELECT 'second'"}]}
    await start_executor()
    await define(client, "flip", first)
    old = await client.start("flip", None)
    await status_becomes(client, old, "waiting")
    await define(client, "flip", second)  # the executor loads it on its next pass
    new = await client.start("flip", None)
    for wid in (old, new):
        await status_becomes(client, wid, "waiting")
        assert await client.send_event(wid, "go", 1)
    assert (await client.result(old, timeout=30))["v"] == "first"
    assert (await client.result(new, timeout=30))["v"] == "second"


@pytest.mark.parametrize(
    "definition, message",
    [
        ({"steps": []}, "at least one step"),
        ({"steps": [{"sql": "SELECT 1"}]}, 'non-empty "name"'),
        ({"steps": [{"name": "a", "sql": "SELECT 1", "wait_event": "x"}]}, "exactly one of"),
        ({"steps": [{"name": "a", "sql": "SELECT 1", "retries": -1}]}, "retries"),
        ({"steps": [{"name": "a", "sql": "SELECT 1", "bogus": 1}]}, "unknown field"),
        ({"steps": [{"parallel": [{"wait_event": "x"}]}]}, "SQL steps only"),
        ({"steps": [{"name": "a", "sql": "SELECT 1"}, {"name": "a", "sql": "SELECT 2"}]}, "unique"),
        ({"steps": [{"sleep_s": "soon"}]}, "sleep_s"),
        ([1], "at least one step"),
    ],
)
async def test_a_bad_definition_is_refused_with_a_reason(
    client: ShardClient, definition: Any, message: str
) -> None:
    with pytest.raises(asyncpg.InvalidParameterValueError, match=message):
        await define(client, "bad", definition)
    assert await client.pool.fetchval("SELECT count(*) FROM shardflow.sql_workflows") == 0


async def test_a_name_defined_in_code_cannot_be_redefined_in_sql(
    client: ShardClient, start_executor: Any
) -> None:
    await start_executor()
    with pytest.raises(asyncpg.InvalidParameterValueError, match="defined in code"):
        await define(client, "w3", {"steps": [{"name": "a", "sql": "SELECT 1"}]})


async def shardflow_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shardflow",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode()


HOLD = (
    "INSERT INTO holds VALUES ($1->>'order', ($1->>'qty')::int) "
    "RETURNING jsonb_build_object('ok', true)"
)


async def test_cluster_define_workflow_reaches_every_shard_and_the_routers(
    cluster: LiveCluster, tmp_path: Path
) -> None:
    for shard_id in SHARDS:
        conn = await asyncpg.connect(cluster.shard_dsns[shard_id])
        try:
            await conn.execute(TABLE)
        finally:
            await conn.close()
    path = tmp_path / "hold.json"
    path.write_text(json.dumps({"steps": [{"name": "hold", "sql": HOLD}]}))
    code, out = await shardflow_cli(
        "cluster", "--catalog", cluster.catalog_dsn, "define-workflow", "hold", str(path)
    )
    assert code == 0 and "defined on every shard" in out, out
    client = await cluster.add_router()
    docs = [
        await client.start("hold", {"order": f"c{i}", "qty": i}, id=f"hold-{i}") for i in range(24)
    ]
    assert len({d["shard"] for d in docs}) == 3
    for d in docs:
        assert await client.result(d["id"], timeout=60) == {"hold": {"ok": True}}
    bad = tmp_path / "bad.json"
    bad.write_text('{"steps": []}')
    code, out = await shardflow_cli(
        "cluster", "--catalog", cluster.catalog_dsn, "define-workflow", "bad", str(bad)
    )
    assert code != 0 and "at least one step" in out and "Traceback" not in out, out
