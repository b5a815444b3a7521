"""Fixtures: real Postgres servers started by the suite, a template database per schema,
a fresh database per test, and in-process or subprocess executors."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from shardflow.devcluster.launcher import LocalPostgres, PostgresServer
from shardflow.shard.client import ShardClient
from shardflow.shard.executor import Executor
from shardflow.shard.executor_settings import ExecutorSettings
from shardflow.shard.migrate import migrate
from shardflow.shard.sdk import Registry
from tests.background import stop_all

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.cluster_fixtures", "tests.citus_fixtures"]
TEMPLATE = "shardflow_template"
_counter = itertools.count()


@pytest.fixture(autouse=True)
async def _stop_background_coordinators() -> AsyncIterator[None]:
    yield
    await stop_all()


@pytest.fixture(scope="session")
def pg_base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="shardflow-tests-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster(pg_base: Path) -> Iterator[LocalPostgres]:
    # fsync off: these servers hold throw-away test data; crashes under test are of
    # processes, never of the operating system, so nothing is lost either way.
    with LocalPostgres(pg_base, durable=False) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg(pg_cluster: LocalPostgres) -> PostgresServer:
    (server,) = pg_cluster.start("shard0")
    asyncio.run(_make_template(server))
    return server


async def _make_template(server: PostgresServer) -> None:
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        await conn.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await conn.close()
    conn = await asyncpg.connect(server.dsn(TEMPLATE))
    try:
        await migrate(conn)
    finally:
        await conn.close()


async def create_database(server: PostgresServer, template: str = TEMPLATE) -> str:
    name = f"t_{os.getpid()}_{next(_counter)}"
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        await conn.close()
    return server.dsn(name)


@pytest.fixture
def shard_server(request: pytest.FixtureRequest) -> Any:
    """Where ``dsn`` makes its shard: the plain server, or with SHARDFLOW_TEST_CITUS=1 the
    session's Citus cluster (tests/citus_fixtures.py)."""
    if os.environ.get("SHARDFLOW_TEST_CITUS") == "1":
        return request.getfixturevalue("citus_cluster")
    return request.getfixturevalue("pg")


@pytest.fixture
async def dsn(shard_server: Any) -> AsyncIterator[str]:
    if not isinstance(shard_server, PostgresServer):
        yield await shard_server.new_schema()
        return
    pg = shard_server
    url = await create_database(pg)
    yield url
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(pg.dsn())
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture
async def client(dsn: str) -> AsyncIterator[ShardClient]:
    c = await ShardClient.connect(dsn)
    yield c
    await c.close()


def settings_for(dsn: str, **overrides: Any) -> ExecutorSettings:
    base: dict[str, Any] = {"dsn": dsn, "app": ["tests.apps.basic"], "poll_interval": 0.05}
    base.update(overrides)
    return ExecutorSettings.load(base, env={})


@pytest.fixture
async def start_executor(
    dsn: str,
) -> AsyncIterator[Callable[..., Any]]:
    """Start in-process executors on the test's database; stopped at teardown."""
    started: list[Executor] = []

    async def start(registry: Registry | None = None, **overrides: Any) -> Executor:
        settings = settings_for(dsn, **overrides)
        executor = Executor(settings, registry or Registry.from_modules(settings.app))
        await executor.start()
        started.append(executor)
        return executor

    yield start
    for executor in started:
        if not executor._stopping:
            await executor.shutdown()


class ExecutorProcess:
    """A real executor process (``python -m shardflow executor``) for crash tests."""

    def __init__(self, dsn: str, app: str, env: dict[str, str] | None = None, **flags: Any):
        args = [sys.executable, "-m", "shardflow", "executor", "--dsn", dsn, "--app", app]
        for key, value in flags.items():
            args += ["--" + key.replace("_", "-"), str(value)]
        full_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        full_env.pop("SHARDFLOW_FAULTS", None)
        full_env.update(env or {})
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix="executor-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def close(self) -> None:
        """Kill the process if it still runs, and remove its log."""
        self.signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.log.name)


@pytest.fixture
def spawn_executor(dsn: str) -> Iterator[Callable[..., ExecutorProcess]]:
    procs: list[ExecutorProcess] = []

    def spawn(
        app: str = "tests.apps.basic", env: dict[str, str] | None = None, **flags: Any
    ) -> ExecutorProcess:
        proc = ExecutorProcess(dsn, app, env, **flags)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        proc.close()
