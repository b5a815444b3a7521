"""One local shard with real executor processes: used by `shardflow demo` and the benchmarks."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from shardflow.devcluster.launcher import (
    LocalPostgres,
    PostgresServer,
    die_with_parent,
    ensure_database,
)
from shardflow.infra import pool as shard_pool
from shardflow.shard.apps import child_env
from shardflow.shard.migrate import migrate
from shardflow.shard.queries import query


class LocalShard:
    def __init__(
        self, data: Path, *, apps: list[str], durable: bool = True, database: str = "shardflow"
    ) -> None:
        self.data = Path(data).absolute()
        self.apps = apps
        self.database = database
        self.cluster = LocalPostgres(self.data, durable=durable, databases=(self.database,))
        self.server: PostgresServer | None = None
        self.executors: list[subprocess.Popen[bytes]] = []

    @property
    def dsn(self) -> str:
        assert self.server is not None
        return self.server.dsn(self.database)

    async def start(self) -> None:
        (self.server,) = self.cluster.start("shard0")
        await ensure_database(self.server, self.database)
        conn = await shard_pool.connect(self.dsn)
        try:
            await migrate(conn)
        finally:
            await shard_pool.close_connection(conn)

    def spawn_executor(
        self, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "shardflow", "executor", "--dsn", self.dsn]
        for app in self.apps:
            args += ["--app", app]
        log = open(self.data / f"executor-{len(self.executors)}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [*args, *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**child_env(None), **(env or {})},
            preexec_fn=die_with_parent,  # no executor outlives a killed launcher
        )
        log.close()
        self.executors.append(proc)
        return proc

    async def wait_registered(self, name: str, timeout: float = 30.0) -> None:
        conn = await shard_pool.connect(self.dsn)
        try:
            for _ in range(int(timeout / 0.1)):
                if await conn.fetchval(query("registry_has"), name):
                    return
                await asyncio.sleep(0.1)
        finally:
            await shard_pool.close_connection(conn)
        raise TimeoutError(f"no executor registered workflow {name} within {timeout} s")

    def stop_executors(self) -> None:
        for proc in self.executors:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.executors:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.executors.clear()

    def stop(self) -> None:
        self.stop_executors()
        self.cluster.stop()
