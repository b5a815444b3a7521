"""`shardflow dev` as a real process tree: fuzzed through its OpenAPI document, resumed,
and stopped by SIGTERM to its whole process group with nothing left behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardflow.devcluster.launcher import LocalPostgres, free_port, remove_data
from shardflow.router.app import openapi_document
from tests.conftest import ROOT

DOC = openapi_document()


def request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    timeout: float = 30,
    token: str | None = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


READY = "shardflow dev cluster"


class Dev:
    """``shardflow dev`` run by ``python`` (this environment's, or an installed wheel's) in
    ``cwd``, with ``app``; ready once ``workflow`` is registered on both shards."""

    def __init__(
        self,
        data: Path,
        *extra: str,
        python: str = sys.executable,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
        app: str = "tests.apps.basic",
        workflow: str = "w3",
        shards: int = 2,
    ) -> None:
        self.data = data
        self.extra = list(extra)
        self.python, self.cwd, self.app, self.workflow = python, cwd, app, workflow
        self.shards = shards
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)} if env is None else env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def banners(self) -> int:
        """How many times a run of ``shardflow dev`` said it was ready (its welcome table,
        printed once every shard's executor has registered its workflows)."""
        out = self.data / "dev.out"
        return out.read_text(errors="replace").count(READY) if out.exists() else 0

    def start(self) -> None:
        ready_before = self.banners()
        log = open(self.data / "dev.out", "ab")  # noqa: SIM115 - closed in stop()
        self.log = log
        self.proc = subprocess.Popen(
            [
                self.python,
                "-m",
                "shardflow",
                "dev",
                "--shards",
                str(self.shards),
                "--slots",
                "32",
                "--app",
                self.app,
                "--port",
                str(self.port),
                "--data",
                str(self.data),
                "--durable",
                "false",
                *self.extra,
            ],
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                code, doc = request(self.url + "/v1/cluster", timeout=2)
                # The router answers before every executor registered: a start of a name
                # only one shard knows yet would be refused. The banner comes after.
                if (
                    code == 200
                    and self.workflow in doc["workflows"]
                    and len(doc["shards"]) == self.shards
                    and self.banners() > ready_before
                ):
                    return
            except (OSError, ValueError):
                pass
            assert self.proc.poll() is None, (self.data / "dev.out").read_text()[-3000:]
            time.sleep(0.2)
        raise AssertionError("shardflow dev did not become ready")

    def shard_dsn(self, shard: str) -> str:
        """The DSN of one of the session's shard servers (its port file, as the launcher
        keeps it between runs)."""
        port = (self.data / "pg" / shard / "shardflow.port").read_text().strip()
        return f"postgresql://postgres@127.0.0.1:{port}/shardflow"

    def tree(self) -> list[int]:
        """PIDs of every process of the session (dev, executors, router, postgres)."""
        assert self.proc is not None
        out = subprocess.run(
            ["ps", "-e", "-o", "pid=,sid=,pgid=,args="], capture_output=True, text=True
        ).stdout
        pids = []
        for line in out.splitlines():
            pid, sid, _pgid, args = line.split(None, 3)
            if int(sid) == self.proc.pid or str(self.data) in args:
                pids.append(int(pid))
        return pids

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)  # the whole process group at once
            self.proc.wait(60)
        self.log.close()

    def remove(self) -> None:
        """Stop, then delete the cluster's data (outside pytest's folder too)."""
        self.stop()
        remove_data(self.data)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    data = tmp_path_factory.mktemp("dev")
    d = Dev(data, "--executors-per-shard", "1")  # beside the router's own (the fast path)
    d.start()
    yield d
    d.remove()


def test_dev_keeps_an_admin_token_for_the_admin_endpoints(dev: Dev):
    """The local cluster stays fully usable: its admin token is made once, kept under
    --data (readable by its owner only) and printed; without it, admin calls are refused."""
    path = dev.data / "admin-token"
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text().strip()
    assert token in (dev.data / "dev.out").read_text()
    body = json.dumps({"name": "tidy", "workflow": "w3", "cron": "0 3 * * *"}).encode()
    assert request(dev.url + "/v1/schedules", "POST", body)[0] == 401
    code, doc = request(dev.url + "/v1/schedules", "POST", body, token=token)
    assert code == 201 and doc["name"] == "tidy"
    assert request(dev.url + "/v1/schedules/tidy", "DELETE", token=token)[0] == 200


def test_workflows_run_and_cluster_resumes_after_sigterm_to_the_group(dev: Dev):
    code, doc = request(
        dev.url + "/v1/workflows",
        "POST",
        json.dumps(
            {"workflow": "w3", "input": {"order_id": 1, "amount": 2.0, "pad": "p"}, "id": "dev-1"}
        ).encode(),
    )
    assert code == 201
    code, doc = request(dev.url + "/v1/workflows/dev-1/result?timeout=30")
    assert code == 200 and doc["output"]["reserved"] == 1
    code, doc = request(
        dev.url + "/v1/workflows",
        "POST",
        json.dumps({"workflow": "long_sleep", "id": "dev-sleeper"}).encode(),
    )
    assert code == 201
    before = dev.tree()
    assert len(before) >= 5
    dev.stop(signal.SIGTERM)
    assert dev.proc is not None and dev.proc.returncode == 0
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in before if _alive(pid)], "a process outlived shardflow dev"
    assert "child_exited" not in (dev.data / "dev.out").read_text(), "restarted on shutdown"
    newest = _forget_newest_migration(dev.data, "shard1")  # as if made by an older version
    dev.start()  # same --data: the same cluster, with its workflows, its schemas upgraded
    assert f"'shard1': [{newest}]" in (dev.data / "dev.out").read_text()
    code, doc = request(dev.url + "/v1/workflows/dev-1")
    assert code == 200 and doc["status"] == "completed"
    code, doc = request(dev.url + "/v1/workflows/dev-sleeper")
    assert code == 200 and doc["status"] in ("sleeping", "pending", "running")


def _forget_newest_migration(data: Path, shard: str) -> int:
    """Start the stopped cluster's server of ``shard`` alone, delete its newest migration
    record (migrations are idempotent: applying one again is safe), stop it; the version."""

    async def forget(dsn: str) -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(
                await conn.fetchval(
                    "DELETE FROM shardflow.schema_migrations WHERE version ="
                    " (SELECT max(version) FROM shardflow.schema_migrations) RETURNING version"
                )
            )
        finally:
            await conn.close()

    with LocalPostgres(data) as pg:
        (server,) = pg.start(shard)
        return asyncio.run(forget(server.dsn("shardflow")))


def test_a_crashed_child_is_restarted(dev: Dev):
    out = subprocess.run(
        ["pgrep", "-f", f"shardflow executor .*{dev.data}"], capture_output=True, text=True
    ).stdout.split()
    if not out:
        out = subprocess.run(
            ["pgrep", "-f", "shardflow executor"], capture_output=True, text=True
        ).stdout.split()
    victims = [int(p) for p in out if int(p) in dev.tree()]
    assert victims
    os.kill(victims[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while "child_exited" not in (dev.data / "dev.out").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    code, _ = request(
        dev.url + "/v1/workflows",
        "POST",
        json.dumps({"workflow": "w3", "input": {}, "id": "after-crash"}).encode(),
    )
    assert code == 201


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
start_like = st.fixed_dictionaries(
    {"workflow": st.sampled_from(["w3", "nope", "approval"]) | st.integers()},
    optional={
        "input": json_values,
        "id": st.text(max_size=210) | st.integers(),
        "routing_key": st.text(max_size=10) | st.none(),
        "extra": json_values,
    },
)
operations = st.sampled_from(
    [(m, p) for p, ops in DOC["paths"].items() for m in ops if p.startswith("/v1/")]
)
queries = st.dictionaries(
    st.sampled_from(["status", "workflow", "limit", "cursor", "timeout", "wait", "routing_key"]),
    st.text(max_size=12),
    max_size=3,
)
segment = st.text(min_size=1, max_size=30)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    op=operations,
    body=st.one_of(json_values, start_like, st.binary(max_size=40)),
    batch=st.lists(start_like, min_size=1, max_size=5),
    wid=segment,
    name=segment,
    query=queries,
)
def test_fuzzed_requests_get_documented_answers(
    dev: Dev,
    op: tuple[str, str],
    body: Any,
    batch: list[Any],
    wid: str,
    name: str,
    query: dict[str, str],
) -> None:
    method, template = op
    path = template.replace("{id}", quote(wid, safe="")).replace("{name}", quote(name, safe=""))
    if "timeout" in query or template.endswith("/result"):
        query = {**query, "timeout": query.get("timeout", "0.05")}
    for waiting in ("timeout", "wait"):  # short waits: an approval never finishes
        if _is_number(query.get(waiting, "")):
            query[waiting] = str(min(abs(float(query[waiting])), 0.05))
    if template.endswith("batch") and not isinstance(body, bytes):
        body = {"workflows": batch}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = dev.url + path + ("?" + urlencode(query) if query else "")
    code, doc = request(url, method.upper(), data if method == "post" else None)
    assert code != 500, doc
    assert str(code) in DOC["paths"][template][method]["responses"], (code, method, url, doc)
    if code >= 400:
        assert set(doc["error"]) >= {"code", "message"}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_sync_client_for_scripts(dev: Dev):
    from shardflow import SyncClient

    client = SyncClient(dev.url)
    try:
        started = client.start("w3", {"order_id": 3, "amount": 1.0, "pad": "s"})
        assert client.result(started["id"], timeout=30)["reserved"] == 3
        assert client.status(started["id"])["status"] == "completed"
        assert client.run("w3", {"order_id": 4, "amount": 1.0, "pad": "s"})["reserved"] == 4
        waiting = client.start("approval", {})
        assert client.send_event(waiting["id"], "approved", True)
        assert client.result(waiting["id"], timeout=30)["payload"] is True
    finally:
        client.close()


def test_a_crash_loop_backs_off():
    from shardflow.devcluster.dev import restart_delay

    assert [restart_delay(n) for n in range(9)] == [0, 0.5, 1, 2, 4, 8, 16, 30, 30]


async def test_a_router_that_cannot_start_is_reported_with_the_end_of_its_log(tmp_path: Path):
    """wait_ready's error carries the child's own words: a benchmark's cluster folder, and
    the log in it, is gone by the time anyone reads the error."""
    from shardflow.devcluster.dev import DevCluster, DevSettings

    data = tmp_path / "cluster"
    data.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(data, 0o755)
    taken = socket.socket()  # bound, not listening: the router's bind fails, probes are refused
    taken.bind(("127.0.0.1", free_port()))
    settings = {
        "app": ["tests.apps.basic"],
        "shards": "1",
        "slots": "8",
        "coordinators": "0",
        "durable": "false",
        "port": str(taken.getsockname()[1]),
        "data": str(data),
    }
    cluster = DevCluster(DevSettings.load(settings, env={}))
    try:
        await cluster.start()
        with pytest.raises(TimeoutError) as caught:
            await cluster.wait_ready(timeout=5)
    finally:
        cluster.stop()
        taken.close()
        remove_data(data)
    message = str(caught.value)
    assert "router-0" in message and "in use" in message.lower(), message
