"""Drive the mixed workload through a router and check what every fault scenario must
leave behind: every workflow at its expected ending, transactional effects exactly once,
no event applied twice, no answer 500."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from examples.bench import make_input
from shardflow.infra.errors import WorkflowFailedError
from shardflow.router.client import Client
from tests.cluster_fixtures import APP_TABLE

# Retries of 429/503 and dropped connections, with the same IDs (exactly one workflow).
RETRIES = 40
BACKOFF = 0.05


@dataclass
class Workload:
    url: str
    prefix: str
    ids: dict[str, str] = field(default_factory=dict)  # workflow ID -> kind

    def client(self) -> Client:
        return Client(self.url, retries=RETRIES, backoff=BACKOFF)

    async def start(self, rounds: int) -> None:
        """Per round: a W3, a crashy (transactional append), a brood of 3 children, an
        order to approve and one to refuse. Starts retry through faults."""
        async with self.client() as client:
            for r in range(rounds):
                tag = f"{self.prefix}-{r}"
                starts = [
                    ("w3", "w3", make_input(r), f"{tag}-w3"),
                    ("crashy", "crashy", {"n": r}, f"{tag}-crashy"),
                    ("brood", "brood", {"n": r}, f"{tag}-brood"),
                    ("approved", "order_fulfillment", _order(f"{tag}-ok"), f"{tag}-ok"),
                    ("refused", "order_fulfillment", _order(f"{tag}-no"), f"{tag}-no"),
                ]
                for kind, name, payload, wid in starts:
                    await client.start(name, payload, id=wid)
                    self.ids[wid] = kind

    async def decide(self) -> None:
        """Send each order its approval (the client's dedup ID makes a retry harmless)."""
        async with self.client() as client:
            for wid, kind in self.ids.items():
                if kind in ("approved", "refused"):
                    await client.send_event(wid, "approved", {"approved": kind == "approved"})

    async def finish(self, timeout: float = 180) -> None:
        """Every workflow at its expected ending."""
        async with self.client() as client:

            async def ending(wid: str, kind: str) -> None:
                if kind == "refused":
                    try:
                        await client.result(wid, timeout=timeout)
                    except WorkflowFailedError:
                        doc = await client.status(wid)
                        assert doc["compensations"] == ["refund_payment", "release_inventory"]
                        return
                    raise AssertionError(f"{wid} should have failed")
                out = await client.result(wid, timeout=timeout)
                if kind == "brood":
                    assert len(out) == 3, (wid, out)

            await asyncio.gather(*(ending(w, k) for w, k in self.ids.items()))


def _order(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "amount": 10.0, "items": ["book"]}


async def prepare(shard_dsns: list[str]) -> None:
    """The application table the transactional step appends to, on every shard."""
    for dsn in shard_dsns:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(APP_TABLE)
        finally:
            await conn.close()


async def check_effects(shard_dsns: list[str], workloads: list[Workload]) -> None:
    """Transactional effects and events exactly once, counted over every shard."""
    rows: Counter[str] = Counter()
    charges: Counter[tuple[str, str]] = Counter()
    events: Counter[str] = Counter()
    where: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for dsn in shard_dsns:
        conn = await asyncpg.connect(dsn)
        try:
            for r in await conn.fetch("SELECT workflow_id FROM app_rows"):
                rows[r["workflow_id"]] += 1
            try:
                for r in await conn.fetch("SELECT order_id, kind, at FROM demo_charges"):
                    charges[(r["order_id"], r["kind"])] += 1
                    where.setdefault((r["order_id"], r["kind"]), []).append((dsn, str(r["at"])))
            except asyncpg.UndefinedTableError:
                pass
            sql = "SELECT workflow_id FROM shardflow.events WHERE name = 'approved'"
            for r in await conn.fetch(sql):
                events[r["workflow_id"]] += 1
        finally:
            await conn.close()
    for load in workloads:
        for wid, kind in load.ids.items():
            if kind == "crashy":
                assert rows[wid] == 1, (wid, rows[wid])
            if kind in ("approved", "refused"):
                assert events[wid] == 1, (wid, events[wid])
                assert charges[(wid, "charge")] == 1, (wid, where.get((wid, "charge")))
                assert charges[(wid, "refund")] == (kind == "refused"), (wid, charges)


def no_internal_errors(logs: Path) -> None:
    """No process of the cluster answered 500 (routers log each one)."""
    for log in sorted(logs.glob("router-*.log")):
        assert "event=internal_error" not in log.read_text(errors="replace"), log.name
