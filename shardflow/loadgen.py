"""An asyncio load generator for the HTTP API (its own process in the benchmarks).

closed: N clients, each starting a W3 workflow and long-polling its result, in a loop.
open: arrivals at a fixed rate, each a start plus its long poll, latency measured from
the scheduled arrival (so a slow system cannot hide queueing). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp

from examples.bench import make_input


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class Load:
    def __init__(self, url: str, workflow: str = "w3") -> None:
        self.url = url.rstrip("/")
        self.workflow = workflow
        self.latencies: list[float] = []
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.session: aiohttp.ClientSession | None = None

    async def one(self, i: int, t0: float) -> None:
        assert self.session is not None
        body = {"workflow": self.workflow, "input": make_input(i), "id": uuid.uuid4().hex}
        try:
            async with self.session.post(self.url + "/v1/workflows", json=body) as resp:
                if resp.status not in (200, 201):
                    self.error(f"start {resp.status}")
                    return
                await resp.read()
            while True:
                async with self.session.get(
                    f"{self.url}/v1/workflows/{body['id']}/result", params={"timeout": "30"}
                ) as resp:
                    await resp.read()
                    if resp.status == 200:
                        break
                    if resp.status != 202:
                        self.error(f"result {resp.status}")
                        return
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.error(type(exc).__name__)
            return
        self.latencies.append(time.perf_counter() - t0)

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    async def closed(self, clients: int, seconds: float) -> float:
        deadline = time.perf_counter() + seconds
        counter = iter(range(10**12))

        async def worker() -> None:
            while time.perf_counter() < deadline:
                await self.one(next(counter), time.perf_counter())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - started

    async def open(self, rate: float, seconds: float) -> float:
        tasks = []
        started = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            at = started + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one(i, at)))
        await asyncio.gather(*tasks)
        return time.perf_counter() - started

    def summary(self, elapsed: float) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "completed": len(lat),
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "seconds": round(elapsed, 3),
            "wf_per_s": round(len(lat) / elapsed, 1) if elapsed else 0.0,
            "p50_ms": round(percentile(lat, 0.5) * 1000, 2),
            "p95_ms": round(percentile(lat, 0.95) * 1000, 2),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
            "p999_ms": round(percentile(lat, 0.999) * 1000, 2),
        }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = Load(args.url, args.workflow)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        load.session = session
        if args.mode == "closed":
            elapsed = await load.closed(args.clients, args.seconds)
        else:
            elapsed = await load.open(args.rate, args.seconds)
    return load.summary(elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=("closed", "open"), default="closed")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workflow", default="w3")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
