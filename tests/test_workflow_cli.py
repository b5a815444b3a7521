"""`shardflow workflow ...` against a live cluster: tables, --json, and bad input answered
with one line and a distinct exit code."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from examples.bench import make_input
from tests.cluster_fixtures import LiveCluster
from tests.conftest import ROOT


def _cli(url: str, *args: str, token: str | None = "tok") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHARDFLOW_URL": url}
    env.pop("SHARDFLOW_TOKEN", None)
    if token is not None:
        env["SHARDFLOW_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "shardflow", "workflow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def cli(url: str, *args: str, token: str | None = "tok") -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_cli, url, *args, token=token)


def _one_line_error(done: subprocess.CompletedProcess[str], code: int) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


async def test_the_workflow_commands_against_a_live_cluster(cluster: LiveCluster):
    await cluster.add_router(tokens=["tok"])
    url = cluster.routers[0].url
    payload = json.dumps(make_input(1))
    done = await cli(url, "start", "w3", "--input", payload, "--id", "cli-1", "--wait", "30")
    assert done.returncode == 0 and done.stdout.startswith("cli-1"), done.stderr
    done = await cli(url, "result", "cli-1")
    assert done.returncode == 0 and json.loads(done.stdout)["reserved"] == 1
    done = await cli(url, "show", "cli-1")
    assert done.returncode == 0
    for word in ("completed", "steps", "reserve", "charge", "notify"):
        assert word in done.stdout, done.stdout
    listed = json.loads((await cli(url, "--json", "list", "--workflow", "w3")).stdout)
    assert "cli-1" in [w["id"] for w in listed["workflows"]]
    assert "cli-1" in (await cli(url, "list")).stdout

    await cli(url, "start", "approval", "--input", "{}", "--id", "cli-2")
    done = await cli(url, "signal", "cli-2", "approved", "--payload", '{"ok": true}')
    assert done.returncode == 0 and done.stdout.strip() == "delivered"
    assert (await cli(url, "result", "cli-2")).returncode == 0

    await cli(url, "start", "failing", "--id", "cli-3")
    failed = await cli(url, "result", "cli-3")
    assert failed.returncode == 1 and failed.stdout.startswith("failed")
    assert (await cli(url, "retry", "cli-3")).returncode == 0

    await cli(url, "start", "long_sleep", "--id", "cli-4")
    assert (await cli(url, "cancel", "cli-4")).returncode == 0
    assert (await cli(url, "result", "cli-4")).returncode == 1

    _one_line_error(await cli(url, "show", "no-such-workflow"), 3)
    _one_line_error(await cli(url, "signal", "cli-4", "x", "--payload", "{bad"), 2)
    _one_line_error(await cli("http://127.0.0.1:9", "show", "cli-1"), 4)
    _one_line_error(await cli(url, "show", "cli-1", token="wrong"), 5)
    other = json.dumps(make_input(2))
    _one_line_error(await cli(url, "start", "w3", "--input", other, "--id", "cli-1"), 6)
