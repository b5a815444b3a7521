"""Cluster operations over HTTP (authenticated), status with the leader, schema checks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from shardflow.infra.errors import SettingsError
from shardflow.shard.executor import Executor
from shardflow.shard.sdk import Registry
from tests.cluster_fixtures import LiveCluster
from tests.conftest import ROOT, settings_for
from tests.test_rebalance import _moves_done, _run_coordinator
from tests.waiting import until


async def _call(
    url: str, method: str, path: str, token: str | None = "ops", **kw: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url + path, headers=headers, **kw) as resp,
    ):
        return resp.status, await resp.json()


async def test_cluster_operations_over_http(growing: LiveCluster):
    await growing.add_router(tokens=["user"], admin_tokens=["ops"])
    url = growing.routers[0].url
    assert (await _call(url, "POST", "/v1/cluster/rebalance", token=None))[0] == 401
    assert (await _call(url, "POST", "/v1/cluster/rebalance", token="user"))[0] == 403
    assert (await _call(url, "GET", "/v1/cluster", token="user"))[0] == 200
    status, body = await _call(
        url, "POST", "/v1/cluster/shards", json={"id": "c2", "dsn": growing.shard_dsns["c2"]}
    )
    assert status == 201 and body["slots"] == 0
    status, body = await _call(
        url, "POST", "/v1/cluster/shards", json={"id": "c2", "dsn": growing.shard_dsns["c2"]}
    )
    assert (status, body["error"]["code"]) == (409, "cluster_conflict")
    stop = asyncio.Event()
    await _run_coordinator(growing, stop)
    status, body = await _call(url, "POST", "/v1/cluster/rebalance")
    assert status == 202 and body["moves"] > 0
    status, body = await _call(url, "POST", "/v1/cluster/rebalance")
    assert (status, body["error"]["code"]) == (409, "cluster_conflict")
    await until(lambda: _moves_done(growing), timeout=120, what="the rebalance")
    status, body = await _call(url, "GET", "/v1/cluster")
    assert status == 200 and body["leader"]["owner"] and body["moves"] == []
    assert sorted(s["slots"] for s in body["shards"]) == [21, 21, 22]
    assert all(s["healthy"] for s in body["shards"])
    status, body = await _call(url, "DELETE", "/v1/cluster/shards/c1")
    assert (status, body["error"]["code"]) == (409, "cluster_conflict")
    status, body = await _call(url, "POST", "/v1/cluster/shards/c1/drain")
    assert status == 202
    await until(lambda: _moves_done(growing), timeout=120, what="the drain")
    status, body = await _call(url, "DELETE", "/v1/cluster/shards/c1")
    assert status == 200 and body["removed"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # as if the newest migration had not run on this shard yet
        (
            "DELETE FROM shardflow.schema_migrations"
            " WHERE version = (SELECT max(version) FROM shardflow.schema_migrations)",
            "shardflow cluster migrate",
        ),
        ("INSERT INTO shardflow.schema_migrations VALUES (999, 'future')", "version 999"),
    ],
    ids=["older", "newer"],
)
async def test_executor_refuses_a_schema_it_does_not_match(dsn: str, change: str, message: str):
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(change)
    finally:
        await conn.close()
    executor = Executor(settings_for(dsn), Registry.from_modules(["tests.apps.basic"]))
    with pytest.raises(SettingsError, match=message):
        await executor.start()
    if executor._pool is not None:
        await executor._pool.close()


async def _raw_status(url: str, request: bytes) -> int:
    """The status of one hand-written HTTP/1.1 request (headers aiohttp would refuse)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
    return int(status_line.split()[1])


@pytest.mark.parametrize("token", ["tökén".encode(), b"\xff\xfe", "пароль".encode()])
async def test_a_non_ascii_token_is_401_not_500(growing: LiveCluster, token: bytes):
    await growing.add_router(tokens=["user"])
    request = (
        b"GET /v1/cluster HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer " + token + b"\r\n\r\n"
    )
    assert await _raw_status(growing.routers[0].url, request) == 401


async def test_admin_endpoints_are_closed_without_admin_tokens(growing: LiveCluster):
    await growing.add_router(admin_tokens=[])
    url = growing.routers[0].url
    for method, path in (("POST", "/v1/cluster/rebalance"), ("DELETE", "/v1/schedules/x")):
        status, body = await _call(url, method, path, token=None)
        assert (status, body["error"]["code"]) == (403, "forbidden")
    assert (await _call(url, "GET", "/v1/cluster", token=None))[0] == 200  # the rest is open


async def test_a_router_open_beyond_loopback_warns(
    growing: LiveCluster, caplog: pytest.LogCaptureFixture
):
    caplog.set_level("WARNING", "shardflow.router")
    await growing.add_router(host="0.0.0.0")
    assert "event=router_unauthenticated" in caplog.text


def _cluster_cli(catalog: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHARDFLOW_CATALOG": catalog}
    return subprocess.run(
        [sys.executable, "-m", "shardflow", "cluster", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_rebalance_wait_says_when_no_leader_runs_and_when_moves_roll_back(
    growing: LiveCluster,
):
    """`cluster rebalance --wait` (the catalog from SHARDFLOW_CATALOG) stops with a clear
    message when no coordinator leads, and reports rolled-back moves with a non-zero exit."""
    await growing.catalog.add_shard("c2", growing.shard_dsns["c2"])
    done = await asyncio.to_thread(_cluster_cli, growing.catalog_dsn, "rebalance", "--wait")
    assert done.returncode == 3 and "no coordinator leads" in done.stdout, done.stdout
    # The target becomes unreachable: the coordinator rolls the moves back.
    await growing.catalog.set_dsn("c2", "postgresql://postgres@127.0.0.1:9/nowhere")
    stop = asyncio.Event()
    await _run_coordinator(growing, stop)
    done = await asyncio.to_thread(_cluster_cli, growing.catalog_dsn, "watch")
    assert done.returncode == 1 and "rolled back" in done.stdout, done.stdout
    stop.set()
