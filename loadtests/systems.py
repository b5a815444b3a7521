"""Start each compared system fresh, in its durable configuration, and stop it afterwards.

Every server and worker is a child of the runner, so the CPU they use is the CPU of the
runner's process tree minus the load generator's (``loadtests.cpu.tree_cpu_parts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.bench_cluster import local_cluster
from shardflow.devcluster.launcher import LocalPostgres, die_with_parent, free_port
from shardflow.infra.errors import ShardflowError

RABBITMQ_HOME = Path("/usr/lib/rabbitmq/bin")
ERLANG_EPMD = "epmd"


class BenchmarkError(ShardflowError):
    code = "benchmark_system"


@dataclass
class Running:
    """A started system: where its clients go and how it is set up, for the report."""

    name: str
    target: str
    configuration: str
    versions: dict[str, str] = field(default_factory=dict)
    http: str = ""  # an HTTP API beside the target, for locust (Temporal's)


def _version(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (
        (out.stdout or out.stderr).strip().splitlines()[0]
        if (out.stdout or out.stderr)
        else "unknown"
    )


def _package(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchmarkError(f"{what} exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise BenchmarkError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def _spawn(
    args: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.getcwd(), **(env or {})},
            preexec_fn=preexec or die_with_parent,
        )


def _stop(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        proc.wait()


@contextlib.asynccontextmanager
async def shardflow(shards: int = 3) -> AsyncIterator[Running]:
    async with local_cluster(shards=shards) as cluster:
        postgres = _version([str(cluster.pg.bindir / "postgres"), "--version"])
        yield Running(
            "shardflow",
            cluster.router_urls[0],
            f"{shards} shards, each a Postgres server (fsync on, synchronous_commit on) with one "
            "executor process; one router (aiohttp); one coordinator; 1024 hash slots. "
            "Every step is checkpointed in a committed transaction. The client starts each "
            "workflow with `POST /v1/workflows?wait=30`, which answers with its outcome (one "
            "request; executors take new workflows by hand-off at start).",
            {"shardflow": _package("shardflow"), "postgres": postgres},
        )


@contextlib.asynccontextmanager
async def temporal() -> AsyncIterator[Running]:
    binary = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    folder = Path(tempfile.mkdtemp(prefix="shardflow-temporal-", dir="/tmp"))
    port, http = free_port(), free_port()
    server = _spawn(
        [
            binary,
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--http-port",
            str(http),
            "--metrics-port",
            str(free_port()),
            "--db-filename",
            str(folder / "temporal.db"),
            "--log-level",
            "error",
        ],
        folder / "server.log",
    )
    worker = None
    try:
        await asyncio.to_thread(_wait_port, port, server, "temporal server start-dev")
        target = f"127.0.0.1:{port}"
        worker = _spawn(
            [sys.executable, "-m", "loadtests.temporal_w3", "--target", target],
            folder / "worker.log",
        )
        yield Running(
            "temporal",
            target,
            "Temporal's dev server (`temporal server start-dev`, SQLite persistence in a file: "
            "not a production cluster) and one Python worker (temporalio) running W3 as a "
            "workflow of 3 activities.",
            {"temporal": _version([binary, "--version"]), "temporalio": _package("temporalio")},
            http=f"http://127.0.0.1:{http}",
        )
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)
        shutil.rmtree(folder, ignore_errors=True)


def _rabbit_account() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("rabbitmq")
    except KeyError as exc:
        raise BenchmarkError(
            "run as root without a 'rabbitmq' account: install rabbitmq-server"
        ) from exc


@contextlib.asynccontextmanager
async def rabbitmq() -> AsyncIterator[Running]:
    script = RABBITMQ_HOME / "rabbitmq-server"
    if not script.exists():
        raise BenchmarkError(f"{script} is missing: install Debian's rabbitmq-server")
    folder = Path(tempfile.mkdtemp(prefix="shardflow-rabbitmq-", dir="/tmp"))
    os.chmod(folder, 0o755)
    account = _rabbit_account()
    if account is not None:
        os.chown(folder, account.pw_uid, account.pw_gid)
    port, epmd_port = free_port(), free_port()
    env = {
        "HOME": str(folder),
        "RABBITMQ_NODENAME": f"shardflow{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "ERL_EPMD_PORT": str(epmd_port),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_PID_FILE": str(folder / "rabbitmq.pid"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
    }

    def demote() -> None:
        if account is not None:
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
        die_with_parent()
        os.setpgid(0, 0)

    server = _spawn([str(script)], folder / "server.log", env, demote)
    worker = None
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    try:
        await asyncio.to_thread(_wait_port, port, server, "rabbitmq-server")
        worker = _spawn(
            [sys.executable, "-m", "loadtests.rabbit_w3", "--url", url], folder / "worker.log"
        )
        yield Running(
            "rabbitmq",
            url,
            "Debian's rabbitmq-server (one node, classic durable queues, persistent messages); "
            "one Python worker (aio-pika) chaining 3 queues with publisher confirms and manual "
            "acks (ack after the next step's message is confirmed); the client awaits the "
            "reply by correlation ID.",
            {"rabbitmq": _dpkg("rabbitmq-server"), "aio-pika": _package("aio-pika")},
        )
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server, group=True)
        _stop_epmd(epmd_port)
        shutil.rmtree(folder, ignore_errors=True)


def _stop_epmd(port: int) -> None:
    """epmd daemonizes out of the server's process group: ask it to go."""
    subprocess.run(
        [shutil.which(ERLANG_EPMD) or _epmd_binary(), "-kill"],
        env={**os.environ, "ERL_EPMD_PORT": str(port)},
        capture_output=True,
        check=False,
    )


def _epmd_binary() -> str:
    found = sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))
    return str(found[-1]) if found else ERLANG_EPMD


def _dpkg(package: str) -> str:
    return _version(["dpkg-query", "-W", "-f", "${Version}", package])


def _ready_line(log: Path, proc: subprocess.Popen[bytes], line: str) -> None:
    """Until a child's log says ``line`` (it prints it once it serves)."""
    deadline = time.monotonic() + 90
    while line not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchmarkError(f"{log.name}: not ready: {log.read_text()[-2000:]}")
        time.sleep(0.1)


@contextlib.asynccontextmanager
async def dbos() -> AsyncIterator[Running]:
    """DBOS Transact on a Postgres 15 of its own, started like the shards' (durable: fsync
    and synchronous commit on), and one app process serving W3 over HTTP."""
    from loadtests.dbos_w3 import POOL_SIZE

    folder = Path(tempfile.mkdtemp(prefix="shardflow-dbos-", dir="/tmp"))
    servers = LocalPostgres(folder / "pg", durable=True, databases=("dbos",))
    apps: list[subprocess.Popen[bytes]] = []
    processes = os.cpu_count() or 1  # one per core, as Shardflow's processes have them
    try:
        server = servers.start_one("dbos")  # from the main thread (it installs a signal handler)
        port = free_port()
        for index in range(processes):
            apps.append(
                _spawn(
                    [
                        sys.executable,
                        "-m",
                        "loadtests.dbos_w3",
                        "--database-url",
                        f"postgresql://postgres@127.0.0.1:{server.port}/dbos",
                        "--port",
                        str(port),
                        "--index",
                        str(index),
                    ],
                    folder / f"app-{index}.log",
                )
            )
            # each ready (and the first, which makes the system tables) before the next
            await asyncio.to_thread(
                _ready_line, folder / f"app-{index}.log", apps[-1], "dbos app ready"
            )
        yield Running(
            "dbos",
            f"http://127.0.0.1:{port}",
            "DBOS Transact (the dbos package) on its own Postgres 15, in its durable default: "
            "the workflow's status and each step's output are committed in the system "
            f"database before the next step. {processes} app processes (one per core, each "
            "a DBOS executor on the same system database, sharing the port) serve POST /w3 "
            "(aiohttp): DBOS.start_workflow_async under the client's ID, then the result; "
            f"async workflow and steps on the request's event loop, sys_db_pool_size "
            f"{POOL_SIZE}.",
            {
                "dbos": _package("dbos"),
                "postgres": _version([str(servers.bindir / "postgres"), "--version"]),
            },
        )
    finally:
        for app in apps:
            _stop(app)
        servers.stop()
        shutil.rmtree(folder, ignore_errors=True)


SYSTEMS = {"shardflow": shardflow, "temporal": temporal, "rabbitmq": rabbitmq, "dbos": dbos}
