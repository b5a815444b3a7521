"""A network partition between one executor and its Postgres: the executor runs in a
network namespace of the test's own, reaching Postgres over a veth pair; its link is set
down (packets vanish, nothing is refused). The server's keepalives end the executor's
sessions in seconds, which frees its advisory lock, so a peer reclaims its workflows
long before their lease (10 minutes here) would run out; when the link comes back, the
partitioned executor's writes are fenced, and no transactional step runs twice."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from shardflow.catalog.store import Catalog
from shardflow.devcluster.launcher import (
    LocalPostgres,
    PostgresServer,
    ensure_database,
    free_port,
    remove_data,
)
from shardflow.infra import pool as shard_pool
from shardflow.shard.client import ShardClient
from shardflow.shard.migrate import migrate
from tests.cluster_fixtures import APP_TABLE
from tests.conftest import ROOT, ExecutorProcess
from tests.waiting import until

LEASE = 600  # seconds: recovery that comes sooner is the session's end, not the lease
SUBNET = "10.213.7"  # the test's own veth pair, inside its own namespace

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2 (CI has both)",
)


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[tuple[str, str]]:
    """A namespace joined to the host by a veth pair: (namespace, host address)."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"sfpart-{tag}", f"sfh{tag}", f"sfn{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{SUBNET}.1/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("addr", "add", f"{SUBNET}.2/30", "dev", ns_if, ns=ns)
        _ip("link", "set", ns_if, "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
        yield ns, ns_if
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


@pytest.mark.parametrize("side", ["executor", "router"])
async def test_a_partitioned_executor_is_recovered_by_its_peer(
    netns: tuple[str, str], tmp_path: Path, side: str
) -> None:
    """``side``: an executor process, or a router running the fast path (its own executor
    takes the starts it accepts), on the far side of the partition."""
    ns, ns_if = netns
    base = tmp_path / "pg"
    server_pg = LocalPostgres(
        base, durable=False, extra_settings={"listen_addresses": f"127.0.0.1,{SUBNET}.1"}
    )
    partitioned: subprocess.Popen[bytes] | None = None
    peer: ExecutorProcess | None = None
    try:
        (server,) = server_pg.start("part")
        hba = server.data_dir / "pg_hba.conf"
        hba.write_text(hba.read_text() + f"host all all {SUBNET}.0/30 trust\n")
        await ensure_database(server, "shardflow")
        dsn = server.dsn("shardflow")
        conn = await shard_pool.connect(dsn)
        try:
            await conn.execute("SELECT pg_reload_conf()")
            await migrate(conn)
            await conn.execute(
                APP_TABLE.replace("SELECT shardflow.colocate('app_rows', 'slot');", "")
            )
        finally:
            await conn.close()
        far = f"postgresql://postgres@{SUBNET}.1:{server.port}/shardflow"
        client = await ShardClient.connect(dsn)
        try:
            if side == "executor":
                partitioned = _executor_in(ns, far, tmp_path / "partitioned.log")
                held = await _started_under(client, partitioned)
            else:
                catalog = await _far_catalog(server, far)
                url, partitioned = _router_in(ns, catalog, tmp_path / "router.log")
                held = await _started_through(url, client, partitioned, server.dsn("catalog"))
            _ip("link", "set", ns_if, "down", ns=ns)  # silence: nothing is refused
            cut = time.monotonic()
            peer = ExecutorProcess(
                dsn, "tests.apps.crash", lease_seconds=LEASE, maintenance_interval=0.2
            )
            for wid in held:
                assert (await client.result(wid, timeout=90))["rows"] == 1
            recovered = time.monotonic() - cut
            print(f"\npartition: {len(held)} workflows recovered {recovered:.1f} s after the cut")
            assert "event=reclaimed" in peer.output()  # by the dead session, not the lease
            _ip("link", "set", ns_if, "up", ns=ns)  # healed: its late writes are fenced
            await _exactly_once(dsn, held)
        finally:
            await client.close()
    finally:
        if partitioned is not None:
            partitioned.kill()
            partitioned.wait()
        if peer is not None:
            peer.stop()
        server_pg.stop()
        remove_data(base)


def _executor_in(ns: str, dsn: str, log_path: Path) -> subprocess.Popen[bytes]:
    """An executor process inside the namespace, reaching its shard over the veth pair."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "shardflow", "executor",
             "--dsn", dsn, "--app", "tests.apps.crash", "--lease-seconds", str(LEASE),
             "--handoff", "false"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip


async def _far_catalog(server: PostgresServer, far_shard: str) -> str:
    """A catalog on the same server naming the shard by its far address; its far DSN."""
    await ensure_database(server, "catalog")
    catalog = await Catalog.connect(server.dsn("catalog"))
    try:
        await catalog.create(16)
        await catalog.add_shard("s1", far_shard)
        await catalog.spread()
    finally:
        await catalog.close()
    return f"postgresql://postgres@{SUBNET}.1:{server.port}/catalog"


def _router_in(ns: str, catalog: str, log_path: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """A router with executors (the fast path) inside the namespace: its URL (on the
    namespace's side of the veth pair) and process."""
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "shardflow", "router",
             "--catalog", catalog, "--host", f"{SUBNET}.2", "--port", str(port),
             "--executors", "--app", "tests.apps.crash"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    return f"http://{SUBNET}.2:{port}", proc


async def _started_through(
    url: str, client: ShardClient, router: subprocess.Popen[bytes], catalog: str
) -> list[str]:
    """Workflows started through the partitioned router, held by its own executor."""

    async def registered() -> bool:  # in the shard, then its names in the catalog
        assert router.poll() is None, "the partitioned router exited"
        if not await client.pool.fetchval("SELECT count(*) FROM shardflow.executors"):
            return False
        conn = await asyncpg.connect(catalog)
        try:
            return bool(await conn.fetchval("SELECT count(*) FROM catalog.registry"))
        finally:
            await conn.close()

    await until(registered, timeout=60, what="the partitioned router's executor")
    ids = [f"part-{i}" for i in range(4)]
    async with aiohttp.ClientSession() as http:
        for wid in ids:
            body = {"workflow": "slow_append", "input": {"seconds": 3.0}, "id": wid}
            async with http.post(f"{url}/v1/workflows", json=body) as resp:
                assert resp.status == 201, await resp.text()
    owners = "SELECT DISTINCT lease_owner FROM shardflow.workflows WHERE status = 'running'"

    async def held() -> bool:
        running = await client.pool.fetch(owners)
        executors = await client.pool.fetch("SELECT owner FROM shardflow.executors")
        return len(running) == 1 and {r["owner"] for r in executors} == {running[0][0]}

    await until(held, what="the router's own executor to hold them")
    return ids


async def _started_under(client: ShardClient, executor: subprocess.Popen[bytes]) -> list[str]:
    """Workflows that the partitioned executor holds (in their long first step)."""

    async def registered() -> bool:
        assert executor.poll() is None, "the partitioned executor exited"
        return bool(await client.pool.fetchval("SELECT count(*) FROM shardflow.registry"))

    await until(registered, what="the partitioned executor")
    ids = [await client.start("slow_append", {"seconds": 3.0}) for _ in range(4)]

    async def leased() -> bool:
        sql = "SELECT count(*) FROM shardflow.workflows WHERE status = 'running'"
        return int(await client.pool.fetchval(sql)) == len(ids)

    await until(leased, what="the partitioned executor to claim them")
    return ids


async def _exactly_once(dsn: str, ids: list[str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(50):  # the healed executor's own attempts, if any, come and are fenced
            rows = await conn.fetch("SELECT workflow_id, count(*) AS n FROM app_rows GROUP BY 1")
            assert {r["workflow_id"]: r["n"] for r in rows} == dict.fromkeys(ids, 1)
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
