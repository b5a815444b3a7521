"""The local Postgres launcher: unprivileged servers, reuse on restart, no orphans."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from shardflow.devcluster import launcher
from shardflow.devcluster.launcher import LocalPostgres, remove_data
from tests.conftest import ROOT


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


async def test_reuses_its_data_directory_across_restarts(tmp_path: Path):
    base = tmp_path / "cluster"  # under pytest's 0700 folder: unreachable for other users
    with LocalPostgres(base, durable=False) as cluster:
        (server,) = cluster.start("s1")
        port = server.port
        conn = await asyncpg.connect(server.dsn())
        await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        await conn.close()
        assert server.process is not None
        if os.geteuid() == 0:
            assert os.stat(f"/proc/{server.process.pid}").st_uid != 0, "postgres ran as root"
    with LocalPostgres(base, durable=False) as cluster:
        (server,) = cluster.start("s1")
        assert server.port == port
        conn = await asyncpg.connect(server.dsn())
        assert await conn.fetchval("SELECT v FROM kept") == 42
        await conn.close()
    external = (base / "pg").resolve()
    remove_data(base)
    assert not base.exists() and not external.exists(), "data left behind"


async def test_a_new_server_comes_with_its_databases_and_no_admin_activity(tmp_path: Path):
    # Autovacuum starts a worker for every database with statistics: a new server's are
    # made before it starts, and nothing of initdb's shows (durable: the WAL primed too).
    with LocalPostgres(tmp_path / "dbs", durable=True, databases=("app",)) as cluster:
        (server,) = cluster.start("s1")
        conn = await asyncpg.connect(server.dsn("app"))
        try:
            rows = await conn.fetch(
                "SELECT datname, xact_commit FROM pg_stat_database WHERE datname IS NOT NULL"
            )
            assert await conn.fetchval("SELECT count(*) FROM pg_ls_waldir()") > 1
        finally:
            await conn.close()
    commits = {r["datname"]: r["xact_commit"] for r in rows}
    assert commits["template1"] == commits["postgres"] == 0
    assert commits["app"] > 0


def test_killed_launcher_leaves_no_server(tmp_path: Path):
    script = (
        "import sys, time\n"
        "from shardflow.devcluster.launcher import LocalPostgres\n"
        "c = LocalPostgres(sys.argv[1], durable=False)\n"
        "(s,) = c.start('s1')\n"
        "print(s.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "orphans")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    assert _alive(pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "postgres outlived its killed launcher"
    remove_data(tmp_path / "orphans")


def test_missing_binaries_are_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from shardflow.devcluster import launcher

    monkeypatch.setattr(launcher.glob, "glob", lambda _: [])
    monkeypatch.setattr(launcher.shutil, "which", lambda _: None)
    monkeypatch.setattr(launcher, "_DEBIAN_BIN", str(tmp_path / "none"))
    with pytest.raises(launcher.LauncherError, match="no Postgres server binaries"):
        launcher.find_bindir()


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Outgoing connections take ports from the ephemeral range: a port picked there could
    be gone by the time its server binds it."""
    start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [launcher.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(launcher.PORT_FLOOR <= p < start for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))
    # No room below the range: the kernel's pick.
    narrow = tmp_path / "range"
    narrow.write_text(f"{launcher.PORT_FLOOR + 10}\t60999\n")
    monkeypatch.setattr(launcher, "_EPHEMERAL_RANGE", narrow)
    assert launcher.free_port() >= start
