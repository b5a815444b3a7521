"""Shardflow on a real Citus cluster (a coordinator and two workers, started once per
session: tests/citus_fixtures.py). What runs today; docs/citus.md lists what does not."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from examples.bench import make_input
from shardflow.catalog.store import Catalog
from shardflow.coordinator import citus
from shardflow.devcluster.dev import CITUS_SETTINGS
from shardflow.devcluster.launcher import LocalPostgres
from shardflow.infra import placement
from shardflow.infra import pool as shard_pool
from shardflow.shard.client import ShardClient
from shardflow.shard.executor import Executor
from shardflow.shard.sdk import Registry
from tests.citus_fixtures import CitusCluster, require_citus
from tests.conftest import ROOT, settings_for
from tests.test_dev import Dev, request
from tests.waiting import until

# A poll this long never fires within a test: work reaches the executor by NOTIFY alone.
NO_POLL = 600.0


async def test_citus_init_is_idempotent_against_the_real_extension(citus_cluster: CitusCluster):
    """Twice: the extension on every node, the workers added once, four distributed
    schemas, the catalog and its slots, the same layout both times."""
    c = citus_cluster
    workers = tuple(c.node(w) for w in c.workers)
    dsn = c.coordinator.dsn("init_twice")
    conn = await asyncpg.connect(c.dsn)
    try:
        await conn.execute("CREATE DATABASE init_twice")
    finally:
        await conn.close()
    for w in c.workers:  # a new database: the workers need it too (the extension: init)
        conn = await asyncpg.connect(w.dsn())
        try:
            await conn.execute("CREATE DATABASE init_twice")
        finally:
            await conn.close()
    first = await citus.init(dsn, 4, 64, coordinator_host=c.node(c.coordinator), workers=workers)
    second = await citus.init(dsn, 4, 64, coordinator_host=c.node(c.coordinator), workers=workers)
    assert first == second and sorted(first.shards) == ["s1", "s2", "s3", "s4"]
    conn = await asyncpg.connect(dsn)
    try:
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_dist_node WHERE noderole = 'primary'") == 3
        )
        schemas = await conn.fetch("SELECT schema_name::text FROM citus_schemas ORDER BY 1")
        assert [r[0] for r in schemas] == [f"shardflow_s{k}" for k in range(1, 5)]
    finally:
        await conn.close()
    catalog = await Catalog.connect(dsn, pool_size=1)
    try:
        assert await catalog.slot_count() == 64
        assert sorted(s.id for s in await catalog.shards()) == ["s1", "s2", "s3", "s4"]
    finally:
        await catalog.close()


async def test_the_compose_image_builds_the_citus_the_tests_run(citus_cluster: CitusCluster):
    """deploy/compose/citus.yml builds deploy/citus/Dockerfile: the same Citus release."""
    dockerfile = (ROOT / "deploy" / "citus" / "Dockerfile").read_text()
    (version,) = re.findall(r"^ARG CITUS_VERSION=(\S+)$", dockerfile, re.M)
    conn = await asyncpg.connect(citus_cluster.dsn)
    try:
        assert f"Citus {version} " in await conn.fetchval("SELECT citus_version()")
        assert "150000" <= await conn.fetchval("SHOW server_version_num") < "160000"
    finally:
        await conn.close()
    compose = (ROOT / "deploy" / "compose" / "citus.yml").read_text()
    assert "context: ../citus" in compose


async def _node_of(c: CitusCluster, dsn: str) -> str:
    conn = await asyncpg.connect(c.dsn)
    try:
        node = await placement.node_of(conn, shard_pool.schema_of(dsn))
    finally:
        await conn.close()
    assert node is not None
    return f"{node[0]}:{node[1]}"


async def test_an_executor_works_on_the_schemas_node_and_hears_its_notifications(
    citus_cluster: CitusCluster,
):
    """The executor and the client talk to the worker holding the schema, not the
    coordinator: with polling out of the picture, a W3 still completes, so the hand-off
    or ready NOTIFY and the outcome NOTIFY reached them there."""
    dsn = await citus_cluster.new_schema()
    node = await _node_of(citus_cluster, dsn)
    assert node != citus_cluster.node(citus_cluster.coordinator)
    settings = settings_for(dsn, poll_interval=NO_POLL)
    executor = Executor(settings, Registry.from_modules(settings.app))
    await executor.start()
    client = await ShardClient.connect(dsn)
    try:
        assert urlsplit(executor._placement.node).netloc.endswith(node)
        wid = await client.start("w3", make_input(1))
        assert await client.result(wid, timeout=30) == {
            "reserved": 1,
            "charged": 10.25,
            "notified": True,
        }
    finally:
        await client.close()
        await executor.shutdown()


async def test_a_start_hands_off_while_the_queue_holds_due_work(citus_cluster: CitusCluster):
    """With due work in the queue, a start first reads the kinds that work holds (so that
    no hand-off passes it by): a function reading tables, which Citus refuses to run from
    inside a query on a shard; start_one calls it on its own."""
    dsn = await citus_cluster.new_schema()
    settings = settings_for(dsn, poll_interval=NO_POLL)
    executor = Executor(settings, Registry.from_modules(settings.app))
    await executor.start()
    client = await ShardClient.connect(dsn)
    try:
        # Due, and claimed by nobody: no NOTIFY wakes the executor, which polls every 600 s.
        ghost = "INSERT INTO shardflow.ready (workflow_id, slot) VALUES ('ghost', 0)"
        await client.pool.execute(shard_pool.in_schema(ghost, shard_pool.schema_of(dsn)))
        wid = await client.start("w3", make_input(5))
        assert (await client.result(wid, timeout=30))["reserved"] == 5
    finally:
        await client.close()
        await executor.shutdown()


async def test_an_executor_follows_its_schema_when_citus_moves_it(citus_cluster: CitusCluster):
    """citus_move_shard_placement moves the schema to the other worker: the executor
    takes its lock and LISTEN there, records where its lock now is, moves its pool, and
    the next workflow runs by NOTIFY on the new node."""
    c = citus_cluster
    dsn = await c.new_schema()
    settings = settings_for(dsn, poll_interval=NO_POLL, maintenance_interval=0.1)
    executor = Executor(settings, Registry.from_modules(settings.app))
    await executor.start()
    client = await ShardClient.connect(dsn)
    try:
        before = await _node_of(c, dsn)
        wid = await client.start("w3", make_input(1))
        await client.result(wid, timeout=30)
        target = next(w for w in c.workers if c.node(w) != before)
        conn = await asyncpg.connect(c.dsn)
        try:
            shard_id = await conn.fetchval(
                "SELECT shardid FROM citus_shards WHERE table_name = $1::regclass",
                f"{shard_pool.schema_of(dsn)}.workflows",
            )
            host, port = before.rsplit(":", 1)
            await conn.execute(
                "SELECT citus_move_shard_placement($1, $2, $3, '127.0.0.1', $4, "
                "shard_transfer_mode => 'block_writes')",
                shard_id,
                host,
                int(port),
                target.port,
            )
        finally:
            await conn.close()
        assert await _node_of(c, dsn) == c.node(target)

        async def followed() -> bool:
            return all(
                urlsplit(node_dsn).netloc.endswith(c.node(target))
                for node_dsn in (executor._placement.node, client.results._placement.node)
            )

        await until(followed, what="the executor and the client to follow the schema")
        lock_server = await executor.store.pool.fetchval(
            shard_pool.in_schema(
                "SELECT lock_server FROM shardflow.executors WHERE owner = $1",
                shard_pool.schema_of(dsn),
            ),
            executor.owner,
        )
        conn = await asyncpg.connect(target.dsn("shardflow"))
        try:
            here = await conn.fetchval(
                "SELECT (SELECT system_identifier FROM pg_control_system())::text || '@' "
                "|| pg_postmaster_start_time()::text"
            )
        finally:
            await conn.close()
        assert lock_server == here
        wid = await client.start("w3", make_input(2))
        assert (await client.result(wid, timeout=30))["reserved"] == 2
    finally:
        await client.close()
        await executor.shutdown()


async def test_a_lock_is_tested_only_on_the_server_holding_it(dsn: str, start_executor: Any):
    """reclaim_dead (migration 0020): a free advisory lock means death only for an
    executor whose lock was held on this server in this life; one held on another
    server is left to its lease, one held in an earlier life of this server is dead."""
    executor = await start_executor()
    conn = await shard_pool.connect(dsn)
    try:
        here = await conn.fetchval("SELECT shardflow.lock_server()")
        system = here.split("@")[0]
        rows = {
            "elsewhere": "12345@2026-01-01 00:00:00+00",
            "earlier-life": f"{system}@2000-01-01 00:00:00+00",
            "here": here,
        }
        for owner, server in rows.items():
            await conn.execute(
                "INSERT INTO shardflow.executors (owner, lock_key, lease_until, lock_server) "
                "VALUES ($1, $2, now() + interval '1 hour', $3)",
                owner,
                abs(hash(owner)) % 2**31,
                server,
            )
        await executor.store.reclaim_dead(executor.owner, 3)
        left = {r[0] for r in await conn.fetch("SELECT owner FROM shardflow.executors")}
        assert "elsewhere" in left
        assert "earlier-life" not in left and "here" not in left
    finally:
        await shard_pool.close_connection(conn)


@pytest.fixture(scope="module")
def citus_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    """``shardflow dev --citus``: a Citus coordinator and two workers, two shard schemas,
    an executor each, a router and a coordinator, as a user starts it."""
    require_citus()
    d = Dev(
        tmp_path_factory.mktemp("citus-dev"),
        "--citus",
        "--workers",
        "2",
        "--app",
        "tests.apps.crash",
        shards=4,
    )
    d.start()
    yield d
    d.remove()


def _start(dev: Dev, workflow: str, inp: Any, wid: str) -> None:
    body = json.dumps({"workflow": workflow, "input": inp, "id": wid}).encode()
    code, doc = request(dev.url + "/v1/workflows", "POST", body)
    assert code == 201, doc


def _result(dev: Dev, wid: str) -> dict[str, Any]:
    code, doc = request(dev.url + f"/v1/workflows/{wid}/result?timeout=30", timeout=35)
    assert code == 200, doc
    return dict(doc)


def test_workflows_timers_events_and_children_run_through_the_router(citus_dev: Dev):
    _start(citus_dev, "w3", {"order_id": 7, "amount": 1.5, "pad": "c"}, "c-w3")
    _start(citus_dev, "sleeper", {"seconds": 0.5}, "c-sleep")
    _start(citus_dev, "approval", {}, "c-event")
    _start(citus_dev, "family", {"n": 10}, "c-family")
    assert _result(citus_dev, "c-w3")["output"]["reserved"] == 7
    assert _result(citus_dev, "c-sleep")["output"]["after"] == "woke"
    code, _ = request(
        citus_dev.url + "/v1/workflows/c-event/events/approved", "POST", b'{"payload": {"ok": 1}}'
    )
    assert code in (200, 201, 202)
    assert _result(citus_dev, "c-event")["output"]["payload"] == {"ok": 1}
    family = _result(citus_dev, "c-family")
    assert family["status"] == "completed", family
    assert family["output"] == {"first": 10, "second": 11, "failed": "ChildWorkflowFailedError"}
    code, page = request(citus_dev.url + "/v1/workflows?workflow=w3&limit=100")
    assert code == 200 and "c-w3" in {w["id"] for w in page["workflows"]}
    # The coordinator's health checks and figures read each schema on its worker.
    targets = json.loads((citus_dev.data / "prometheus" / "targets" / "targets.json").read_text())
    (coordinator,) = next(
        t["targets"] for t in targets if t["labels"]["job"].endswith("coordinator")
    )
    with urllib.request.urlopen(f"http://{coordinator}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for k in range(1, 5):
        assert f'shardflow_shard_up{{shard="s{k}"}} 1.0' in text


def test_a_killed_executors_workflows_are_reclaimed_because_its_session_ended(citus_dev: Dev):
    """SIGKILL of the executor in the middle of a workflow's step: the restarted executor's
    reclaim finds the dead one's lock free on the schema's node (its session ended with
    the process) and takes the workflow back while the dead one's lease still runs."""
    body = json.dumps({"workflow": "slow", "input": {"steps": 2, "seconds": 3}, "id": "c-kill"})
    code, doc = request(citus_dev.url + "/v1/workflows", "POST", body.encode())
    assert code == 201, doc
    schema = f"shardflow_{doc['shard']}"
    coordinator = citus_dev.shard_dsn("citus-coordinator")
    find = (
        f"SELECT e.owner, e.pid, e.lease_until, now() AS at FROM {schema}.executors e "
        f"JOIN {schema}.workflows w ON w.lease_owner = e.owner WHERE w.id = 'c-kill'"
    )

    async def scenario() -> None:
        conn = await asyncpg.connect(coordinator)
        try:
            holder = await until(lambda: conn.fetchrow(find), what="c-kill to be running")
            killed = time.monotonic()
            os.kill(holder["pid"], signal.SIGKILL)

            async def reclaimed() -> bool:
                gone = await conn.fetchval(
                    f"SELECT NOT EXISTS (SELECT FROM {schema}.executors WHERE owner = $1)",
                    holder["owner"],
                )
                return bool(gone)

            await until(reclaimed, timeout=60, what="the dead executor to be reclaimed")
            print(f"reclaimed {time.monotonic() - killed:.2f} s after the SIGKILL")
            # Removed while its lease still ran: the free lock, not the lease, said dead.
            assert await conn.fetchval("SELECT now()") < holder["lease_until"]
        finally:
            await conn.close()

    asyncio.run(scenario())
    done = _result(citus_dev, "c-kill")
    assert done["status"] == "completed" and done["output"] == 2


def test_a_worker_added_under_load_takes_schemas_and_nothing_is_lost_or_run_twice(
    citus_dev: Dev, tmp_path: Path
):
    """A third worker joins; citus_rebalance_start() (shard_transfer_mode auto: logical
    replication, every table has a primary key) moves schemas to it while W3s start and
    run through the router. Every workflow completes once: never reclaimed or replayed
    (attempt 0), each of its three steps run once."""
    coordinator = citus_dev.shard_dsn("citus-coordinator")
    extra = LocalPostgres(
        tmp_path / "worker3", durable=False, extra_settings=CITUS_SETTINGS, databases=("shardflow",)
    )
    (worker3,) = extra.start("worker3")
    try:
        asyncio.run(citus.add_nodes(coordinator, None, (f"127.0.0.1:{worker3.port}",)))
        try:
            ids = asyncio.run(_load_while_rebalancing(citus_dev.url, coordinator))
        except AssertionError as exc:
            log = (citus_dev.data / "logs" / "router-0.log").read_text(errors="replace")
            raise AssertionError(f"{exc}\n{log[-4000:]}") from None
        for wid in ids:
            assert _result(citus_dev, wid)["status"] == "completed"
        asyncio.run(_check_once(coordinator, ids, worker3.port))
    finally:
        extra.stop()


async def _load_while_rebalancing(url: str, coordinator: str) -> list[str]:
    import aiohttp

    ids: list[str] = []
    done = asyncio.Event()

    async def load(http: aiohttp.ClientSession, lane: int) -> None:
        n = 0
        while not done.is_set() or n < 5:
            wid = f"rb-{lane}-{n}"
            body = {
                "workflow": "w3",
                "input": {"order_id": n, "amount": 1.0, "pad": "r"},
                "id": wid,
            }
            while True:  # a 503 says when to come back (the same ID starts it once)
                async with http.post(url + "/v1/workflows", json=body) as resp:
                    if resp.status == 503:
                        await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                        continue
                    assert resp.status == 201, await resp.text()
                    break
            ids.append(wid)
            n += 1
            await asyncio.sleep(0.02)

    async def rebalance() -> None:
        conn = await asyncpg.connect(coordinator)
        try:
            await asyncio.sleep(1.0)
            await conn.execute("SELECT citus_rebalance_start()")
            await conn.execute("SELECT citus_rebalance_wait()")
            await asyncio.sleep(1.0)
        finally:
            await conn.close()
            done.set()

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(rebalance(), *(load(http, lane) for lane in range(4)))
    return ids


async def _check_once(coordinator: str, ids: list[str], new_port: int) -> None:
    conn = await asyncpg.connect(coordinator)
    try:
        moved = await conn.fetchval(
            "SELECT count(DISTINCT colocation_id) FROM citus_shards "
            "WHERE nodeport = $1 AND table_name::text LIKE 'shardflow_s%'",
            new_port,
        )
        assert moved >= 1, "the rebalancer moved no schema to the new worker"
        print(f"rebalance: {moved} schema(s) moved to the new worker, {len(ids)} workflows")
        for k in range(1, 5):
            rows = await conn.fetch(
                f"SELECT w.id, w.attempt, count(s.seq) AS steps, max(s.attempts) AS tries "
                f"FROM shardflow_s{k}.workflows w JOIN shardflow_s{k}.steps s "
                f"ON s.workflow_id = w.id WHERE w.id = ANY ($1::text[]) GROUP BY w.id, w.attempt",
                ids,
            )
            for row in rows:
                assert (row["attempt"], row["steps"], row["tries"]) == (0, 3, 1), dict(row)
    finally:
        await conn.close()
