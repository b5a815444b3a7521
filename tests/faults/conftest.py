"""A 3-shard `shardflow dev` per scenario, running the fault suite's workload app."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.workload import prepare
from tests.test_dev import Dev

SHARDS = ["shard0", "shard1", "shard2"]


class FaultCluster(Dev):
    def dsns(self) -> list[str]:
        return [self.shard_dsn(s) for s in SHARDS]

    def admin_token(self) -> str:
        return (self.data / "admin-token").read_text().strip()

    def pids(self, *needle: str) -> list[int]:
        """The session's processes whose command line holds every one of ``needle``."""
        found = []
        for pid in self.tree():
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            words = [a.decode(errors="replace") for a in args]
            if all(n in words for n in needle):
                found.append(pid)
        return found

    def postmaster(self, shard: str) -> int:
        return int((self.data / "pg" / shard / "postmaster.pid").read_text().split()[0])


@pytest.fixture
def fault_dev_args() -> list[str]:
    return []


@pytest.fixture
async def fault_dev(
    tmp_path_factory: pytest.TempPathFactory, fault_dev_args: list[str]
) -> AsyncIterator[FaultCluster]:
    data = tmp_path_factory.mktemp("faults")
    dev = FaultCluster(data, *fault_dev_args, app="tests.faults.app", shards=3)
    dev.start()
    try:
        await prepare(dev.dsns())
        yield dev
    finally:
        dev.remove()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not). Its /proc entry can vanish between the
    two looks, when its parent reaps it: gone then too."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


async def owners(dev: FaultCluster) -> dict[int, str]:
    """slot -> shard, from the catalog."""
    import asyncpg

    conn = await asyncpg.connect(dev.shard_dsn("catalog"))
    try:
        return {r["slot"]: r["shard_id"] for r in await conn.fetch("SELECT * FROM catalog.slots")}
    finally:
        await conn.close()


async def key_on(dev: FaultCluster, shard: str, prefix: str) -> str:
    """A workflow ID whose slot the shard owns."""
    from shardflow.shard.slots import slot_of

    slots = await owners(dev)
    i = 0
    while slots[slot_of(f"{prefix}-{i}", len(slots))] != shard:
        i += 1
    return f"{prefix}-{i}"


async def catalog_value(dev: FaultCluster, sql: str) -> object:
    import asyncpg

    conn = await asyncpg.connect(dev.shard_dsn("catalog"))
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


LIVE_MOVES = "SELECT count(*) FROM catalog.moves WHERE phase NOT IN ('done', 'rolled_back')"


async def drain(dev: FaultCluster, shard: str) -> None:
    """Ask the cluster to move every slot off ``shard`` (the admin API, as an operator)."""
    from tests.test_dev import request

    code, doc = await asyncio.to_thread(
        request, f"{dev.url}/v1/cluster/shards/{shard}/drain", "POST", None, 30, dev.admin_token()
    )
    assert code == 202 and doc["moves"] > 0, doc
