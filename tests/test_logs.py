"""Log lines: valid logfmt (quoted values) or JSON, one line per event, with the fields of
the message and of the task that logs (shard, workflow_id, step)."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

import pytest

from shardflow.infra.logs import EventFormatter, context
from shardflow.shard.client import ShardClient
from tests.waiting import until

# A logfmt line: key=value pairs, a value bare or double-quoted with backslash escapes.
LOGFMT = re.compile(r'^(?:[A-Za-z_][\w.]*=(?:"(?:[^"\\]|\\.)*"|[^\s"=]*)(?: |$))+$')
PAIR = re.compile(r'([A-Za-z_][\w.]*)=("(?:[^"\\]|\\.)*"|[^\s"=]*)')


def parse_logfmt(line: str) -> dict[str, str]:
    assert LOGFMT.match(line), line
    return {k: json.loads(v) if v.startswith('"') else v for k, v in PAIR.findall(line)}


def _record(msg: str, *args: Any, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("it broke\non two lines")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("shardflow.test", logging.WARNING, __file__, 1, msg, args, info)


@pytest.mark.parametrize("style", ["logfmt", "json"])
def test_fields_keep_their_values_and_lines_stay_one_per_event(style: str):
    fmt = EventFormatter(style)
    with context(workflow_id="wf-1", step="charge"):
        line = fmt.format(
            _record("event=charge_failed owner=%s error=%r took=%.1fs", "ex 1", KeyError("k"), 2.25)
        )
    fields = json.loads(line) if style == "json" else parse_logfmt(line)
    assert fields["level"] == "warning" and fields["logger"] == "shardflow.test"
    assert fields["event"] == "charge_failed" and fields["owner"] == "ex 1"
    assert fields["error"] == "KeyError('k')" and fields["took"] == "2.2s"
    assert fields["workflow_id"] == "wf-1" and fields["step"] == "charge"
    crashed = fmt.format(_record("event=crashed", exc=True))
    assert "\n" not in crashed
    fields = json.loads(crashed) if style == "json" else parse_logfmt(crashed)
    assert fields["exc"].startswith("Traceback") and "it broke\non two lines" in fields["exc"]


def test_a_message_that_is_not_key_value_is_kept_whole():
    line = EventFormatter("logfmt").format(_record("%s workers ready (%d)", "all", 3))
    assert parse_logfmt(line)["msg"] == "all workers ready (3)"


async def test_an_executor_logs_json_with_its_shard_workflow_and_step(
    dsn: str, client: ShardClient, spawn_executor: Any
):
    proc = spawn_executor("tests.apps.noisy", log_format="json", shard="s7")

    async def registered() -> bool:
        sql = "SELECT count(*) FROM shardflow.registry WHERE name = 'noisy'"
        return bool(await client.pool.fetchval(sql))

    await until(registered, timeout=60, what="the executor to register noisy")
    wid = await client.start("noisy", {"n": 3})
    assert await client.result(wid, timeout=30) == 3
    proc.stop()
    lines = [json.loads(line) for line in proc.output().splitlines() if line.strip()]
    (inside,) = [f for f in lines if f.get("event") == "inside"]
    assert inside["logger"] == "noisy.app" and inside["n"] == "3"
    assert inside["note"] == 'a "quoted" value'
    assert (inside["shard"], inside["workflow_id"], inside["step"]) == ("s7", wid, "shout")
    assert any(f.get("event") == "executor_started" for f in lines)
