"""Workflows defined in SQL (``shardflow.define_workflow``), run by every executor.

A definition is ``{"steps": [...]}`` (the SQL function's comment gives the forms). Each
SQL step becomes a transactional step: its statement commits with its checkpoint, so it
takes effect exactly once; it is retried, timed out and compensated like a Python step,
and a failure fails the workflow after its compensations ran. The workflow's result is
the object of all results, by step (and event) name.
"""

from __future__ import annotations

import datetime
import decimal
import json
import re
import uuid
from collections.abc import Awaitable
from typing import Any

import asyncpg

from shardflow.infra.errors import NonRetryableError
from shardflow.shard.sdk import AnyStep, AnyWorkflow, WorkflowDef, step

DEFAULT_RETRIES = 3


def _plain(value: Any) -> Any:
    """A column value as JSON: numbers, text, booleans, arrays and objects as they are."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


PARAMETER = re.compile(r"\$([1-3])(?!\d)")
SETTINGS = ("shardflow.sql_input", "shardflow.sql_results", "shardflow.sql_result")


async def _run(conn: asyncpg.Connection, sql: str, *values: str) -> Any:
    """Run a step's statement in its transaction; its first column of the first row.

    $1, $2 and $3 stand for jsonb values (the input, the results so far, the step's own
    result for a compensation): set for the transaction and read back in their place, so
    a statement may use any of them, in any order, with no cast of its own.
    """
    await conn.execute(
        "SELECT set_config($1, $2, true), set_config($3, $4, true), set_config($5, $6, true)",
        *(x for pair in zip(SETTINGS, (*values, "null", "null"), strict=False) for x in pair),
    )
    text = PARAMETER.sub(lambda m: f"(current_setting('{SETTINGS[int(m[1]) - 1]}')::jsonb)", sql)
    try:
        statement = await conn.prepare(text)
    except asyncpg.PostgresSyntaxError as exc:  # retrying cannot fix the text
        raise NonRetryableError(f"invalid SQL in a SQL workflow step: {exc}") from exc
    row = await statement.fetchrow()
    if row is None or len(row) == 0:
        return None
    value = row[0]
    if statement.get_attributes()[0].type.name in ("json", "jsonb") and isinstance(value, str):
        return json.loads(value)
    return _plain(value)


def _sql_step(workflow: str, spec: dict[str, Any]) -> AnyStep:
    name = str(spec["name"])
    sql, undo_sql = str(spec["sql"]), spec.get("compensate")

    async def undo(conn: asyncpg.Connection, inp: str, results: str, result: Any) -> Any:
        return await _run(conn, str(undo_sql), inp, results, json.dumps(result))

    async def run(conn: asyncpg.Connection, inp: str, results: str) -> Any:
        return await _run(conn, sql, inp, results)

    return step(
        name=f"sql:{workflow}:{name}",
        retries=int(spec.get("retries", DEFAULT_RETRIES)),
        timeout=spec.get("timeout_s"),
        transactional=True,
        compensate=None
        if undo_sql is None
        else step(name=f"sql:{workflow}:undo {name}", transactional=True)(undo),
    )(run)


def make_workflow(name: str, version: str, definition: dict[str, Any]) -> AnyWorkflow:
    """The WorkflowDef that interprets one version of a SQL definition."""
    plan: list[Any] = []
    for spec in definition["steps"]:
        if "sql" in spec:
            plan.append((str(spec["name"]), _sql_step(name, spec)))
        elif "parallel" in spec:
            plan.append([(str(s["name"]), _sql_step(name, s)) for s in spec["parallel"]])
        else:
            plan.append(spec)

    async def interpret(ctx: Any, inp: Any) -> dict[str, Any]:
        results: dict[str, Any] = {}
        given = json.dumps(inp)
        for item in plan:
            so_far = json.dumps(results)
            if isinstance(item, tuple):
                results[item[0]] = await item[1](given, so_far)
            elif isinstance(item, list):
                calls: list[Awaitable[Any]] = [s(given, so_far) for _, s in item]
                for (key, _), value in zip(item, await ctx.gather(*calls), strict=True):
                    results[key] = value
            elif "wait_event" in item:
                results[item["wait_event"]] = await ctx.wait_for_event(
                    item["wait_event"], item.get("timeout_s")
                )
            else:
                await ctx.sleep(float(item["sleep_s"]))
        return results

    return WorkflowDef(name=name, version=version, fn=interpret)
