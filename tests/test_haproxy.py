"""haproxy in front of the routers: deploy/haproxy/haproxy.cfg passes `haproxy -c`, and
`shardflow dev --routers 2 --haproxy` keeps every start exactly once while routers die."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import asyncpg
import pytest

from shardflow.devcluster import haproxy
from shardflow.router.client import Client
from tests.conftest import ROOT
from tests.test_dev import Dev
from tests.waiting import until

CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def _check(path: os.PathLike[str]) -> None:
    out = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_deploy_config_is_valid_where_compose_names_do_not_resolve():
    _check(CONFIG)


def test_the_dev_rendering_keeps_the_policy_and_replaces_the_addresses(tmp_path):
    text = haproxy.render(CONFIG.read_text(), "127.0.0.1:1", "127.0.0.1:2", ["a:3", "b:4", "c:5"])
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    _check(path)
    servers = [line.split() for line in text.splitlines() if line.split()[:1] == ["server"]]
    assert [s[2] for s in servers] == ["a:3", "b:4", "c:5"]
    assert all("check" in s for s in servers)
    assert "balance leastconn" in text and "option httpchk GET /readyz" in text
    assert "router1:8080" not in text and "bind 127.0.0.1:1" in text


@pytest.fixture(scope="module")
def balanced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    dev = Dev(tmp_path_factory.mktemp("balanced"), "--routers", "2", "--haproxy")
    dev.start()
    yield dev
    dev.remove()


def _routers(dev: Dev) -> list[int]:
    assert dev.proc is not None
    out = subprocess.run(["ps", "-e", "-o", "pid=,sid=,args="], capture_output=True, text=True)
    found = []
    for line in out.stdout.splitlines():
        pid, sid, args = line.split(None, 2)
        if int(sid) == dev.proc.pid and "shardflow router" in args:
            found.append(int(pid))
    return sorted(found)


def test_starts_through_haproxy_survive_router_kills(balanced: Dev):
    dev = balanced
    total = 3000
    before = _routers(dev)
    assert len(before) == 2
    ids = [f"lb-{i}" for i in range(total)]

    async def load() -> list[str]:
        done: list[str] = []
        queue = iter(ids)
        async with Client(dev.url, retries=30, backoff=0.05) as client:

            async def worker() -> None:
                for wf_id in queue:
                    body = {"order_id": int(wf_id[3:]), "amount": 1.0, "pad": "p" * 64}
                    doc = await client.start("w3", body, id=wf_id)
                    done.append(doc["id"])

            async def killer() -> None:
                for n, victim in enumerate(before):  # each router once, after a third
                    share = total * (n + 1) // 3

                    async def reached(share: int = share) -> bool:
                        return len(done) >= share

                    async def restarted(victim: int = victim) -> bool:
                        now = _routers(dev)
                        return len(now) == 2 and victim not in now

                    await until(reached, 120, f"{share} starts")
                    os.kill(victim, signal.SIGKILL)
                    await until(restarted, 60, "the killed router to be restarted")

            await asyncio.gather(killer(), *(worker() for _ in range(32)))
            for wf_id in ids[:: total // 30]:
                assert (await client.result(wf_id, timeout=60))["reserved"] == int(wf_id[3:])
        return done

    acknowledged = asyncio.run(load())
    assert sorted(acknowledged) == sorted(ids)
    after = _routers(dev)
    assert len(after) == 2 and not set(after) & set(before), "both routers were restarted"

    async def stored() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for shard in ("shard0", "shard1"):
            conn = await asyncpg.connect(dev.shard_dsn(shard))
            try:
                rows = await conn.fetch("SELECT id, status FROM shardflow.workflows")
            finally:
                await conn.close()
            for row in rows:
                found.setdefault(row["id"], []).append(row["status"])
        return found

    deadline = time.monotonic() + 120
    while True:  # every start is stored exactly once (no other) and runs to completion
        found = asyncio.run(stored())
        assert set(found) == set(ids)
        assert all(len(statuses) == 1 for statuses in found.values())
        if all(statuses == ["completed"] for statuses in found.values()):
            break
        assert time.monotonic() < deadline, "workflows left unfinished"
        time.sleep(0.5)
