"""Statements of a quiet process run where it listens: a router's small starts on its
completion listener, an executor's small flushes on its hand-off listener
(ResultWaiters.statements, ShardStore.listener, shard.pool.QUIET_BATCH); larger batches,
and every batch while that connection is gone, go through the pool."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from examples.bench import make_input
from shardflow import ShardClient, StartRequest
from shardflow.devcluster.launcher import PostgresServer
from shardflow.infra import pool as shard_pool
from shardflow.router.batcher import StartBatcher
from shardflow.shard.executor import Executor
from shardflow.shard.faults import Faults
from shardflow.shard.sdk import Registry
from tests.conftest import settings_for
from tests.test_engine_basic import until_listening
from tests.waiting import until

# Words of each statement, as pg_stat_activity shows the last one a backend ran (a flush is
# the lean one or, when a claim rides it, the full one).
START = r"\$8: partial"
FLUSH = r"The checkpoint flush of the common case|^-- Group commit|shardflow\.flush_one\("


async def backends_that_ran(pool: asyncpg.Pool, pattern: str) -> set[int]:
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND query ~ $1",
        pattern,
    )
    return {r["pid"] for r in rows}


def reattached(executor: Executor, old: asyncpg.Connection) -> Callable[[], Awaitable[bool]]:
    """A check for ``until``: the executor listens on a new liveness connection."""

    async def check() -> bool:
        return executor.store.listener not in (None, old)

    return check


async def test_a_router_starts_on_its_listener_and_falls_back_to_the_pool(
    client: ShardClient, start_executor: Any
):
    await start_executor()
    results = client.results
    await until_listening(results)
    batcher = StartBatcher(client)
    listener = results.statements(1)
    assert isinstance(listener, asyncpg.Connection)
    for i in range(3):  # one at a time: batches of one, on the listener
        started = await batcher.start(StartRequest("w3", make_input(i)))
        assert (await client.wait(started.id, 30))["status"] == "completed"
    assert await backends_that_ran(client.pool, START) == {listener.get_server_pid()}
    # Ten at once make one batch: a busy router's, sent through the pool (the listener ran
    # no statement since).
    before = await client.pool.fetchval("SELECT clock_timestamp()")
    many = await asyncio.gather(
        *(batcher.start(StartRequest("w3", make_input(i))) for i in range(10, 20))
    )
    for r in many:
        assert (await client.wait(r.id, 30))["status"] == "completed"
    last = await client.pool.fetchval(
        "SELECT query_start FROM pg_stat_activity WHERE pid = $1", listener.get_server_pid()
    )
    assert last < before

    # The listener's backend dies: starts go through the pool until a new one listens,
    # and a wait still gets its answer (read back: the new listener heard nothing before).
    await client.pool.execute("SELECT pg_terminate_backend($1)", listener.get_server_pid())

    async def closed() -> bool:
        return listener.is_closed()

    await until(closed, what="the router to see its listener close")
    assert results.statements(1) is not listener
    late = await batcher.start(StartRequest("w3", make_input(99)))
    assert late.created
    assert (await client.wait(late.id, 30))["status"] == "completed"
    await until_listening(results)
    again = results.statements(1)
    assert isinstance(again, asyncpg.Connection) and again is not listener
    last = await batcher.start(StartRequest("w3", make_input(100)))
    assert (await client.wait(last.id, 30))["status"] == "completed"
    assert again.get_server_pid() in await backends_that_ran(client.pool, START)


async def test_an_executor_flushes_on_its_liveness_connection_and_survives_losing_it(
    client: ShardClient, start_executor: Any
):
    executor = await start_executor(maintenance_interval=0.1)
    listener = executor.store.listener
    assert listener is not None
    first = await client.start("w3", make_input(1))
    assert (await client.wait(first, 30))["status"] == "completed"
    assert await backends_that_ran(client.pool, FLUSH) == {listener.get_server_pid()}

    # Its liveness connection is cut: the executor comes back as a new owner, flushing
    # through the pool meanwhile, and then on its new liveness connection.
    await client.pool.execute("SELECT pg_terminate_backend($1)", listener.get_server_pid())

    await until(reattached(executor, listener), what="the executor to re-attach")
    for i in range(2, 5):
        wid = await client.start("w3", make_input(i))
        assert (await client.wait(wid, 30))["status"] == "completed"
    renewed = executor.store.listener
    assert renewed is not None and not renewed.is_closed()
    assert renewed.get_server_pid() in await backends_that_ran(client.pool, FLUSH)


async def test_a_failed_reattach_closes_its_half_made_connection(client: ShardClient, dsn: str):
    """An attach that fails after taking its advisory lock and registering (the shard went
    away at that moment) closes its connection at once: left open, it would hold the
    lock of an identity nobody uses until the garbage collector found it."""
    settings = settings_for(dsn, maintenance_interval=0.1)
    faults = Faults.parse("executor_registered=raise@2")  # the first re-attach fails
    executor = Executor(settings, Registry.from_modules(settings.app), faults=faults)
    await executor.start()
    try:
        listener = executor.store.listener
        assert listener is not None
        await client.pool.execute("SELECT pg_terminate_backend($1)", listener.get_server_pid())

        await until(reattached(executor, listener), what="the executor to re-attach")
        assert faults.hits["executor_registered"] == 3  # start, the failed try, the good one
        renewed = executor.store.listener
        assert renewed is not None
        # Session advisory locks (held by idle backends): the live identity's alone.
        holders = await client.pool.fetch(
            "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND a.datname = current_database() "
            "AND a.state = 'idle' AND l.granted"
        )
        assert [r["pid"] for r in holders] == [renewed.get_server_pid()]
        wid = await client.start("w3", make_input(1))
        assert (await client.wait(wid, 30))["status"] == "completed"
    finally:
        await executor.shutdown()


async def test_closing_a_connection_that_does_not_answer_drops_it_without_raising(dsn: str):
    """shard.pool.close_connection, the way an executor, a router's listener and the leader
    close their long-lived connections: a backend that does not answer the polite goodbye
    within the timeout (stopped here; a hung or unreachable server in production) is
    dropped, not waited for and not raised, so the caller goes on closing the rest."""
    conn = await shard_pool.connect(dsn)
    backend = conn.get_server_pid()
    os.kill(backend, signal.SIGSTOP)
    try:
        # A plain close() would wait for the answer and raise TimeoutError.
        await shard_pool.close_connection(conn, timeout=0.5)
        assert conn.is_closed()
        await shard_pool.close_connection(conn)  # a second time: nothing to do
    finally:
        os.kill(backend, signal.SIGCONT)


async def test_every_connection_asks_the_server_to_find_a_lost_peer_in_seconds(
    dsn: str, pg: PostgresServer
):
    """The server probes our TCP connections (keepalives, TCP_USER_TIMEOUT), so a crashed
    or partitioned executor's session ends, with its advisory locks, in seconds."""
    tcp = f"postgresql://postgres@127.0.0.1:{pg.port}{urlsplit(dsn).path}"
    conn = await shard_pool.connect(tcp)
    pool = await shard_pool.create_pool(tcp, min_size=1, max_size=1)
    try:
        for db in (conn, pool):
            shown = {
                name: await db.fetchval(f"SHOW {name}") for name in shard_pool.SERVER_KEEPALIVE
            }
            assert shown == {"tcp_keepalives_idle": "2", "tcp_keepalives_interval": "1",
                             "tcp_keepalives_count": "3", "tcp_user_timeout": "5000"}  # fmt: skip
    finally:
        await shard_pool.close_connection(conn)
        await shard_pool.close_pool(pool)
