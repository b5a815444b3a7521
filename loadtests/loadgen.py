"""The benchmarks' one load generator: the same closed and open loops for every system.

closed: N clients, each starting a W3 workflow and waiting for its result, in a loop.
open: arrivals at a fixed rate, each a start plus its wait, latency measured from the
scheduled arrival (so a slow system cannot hide queueing).

``python -m loadtests.loadgen --system shardflow|temporal|rabbitmq --target T --mode ...``
runs one phase in its own process and prints one JSON line. A driver knows one system:
``one(i)`` starts workflow number ``i`` and returns once its result is in, raising on any
failure. The baselines' clients are asyncio libraries (temporalio, aio-pika) that do not
run well under locust's gevent, so every system in the comparison is driven from here;
locust keeps Shardflow's HTTP scenarios (``loadtests/locustfile.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import time
import uuid
from typing import Any, Protocol

import aiohttp

from examples.bench import make_input
from shardflow.shard.model import FINISHED
from shardflow.shard.slots import slot_of


class LoadError(Exception):
    """A failed workflow, named by ``kind`` in the summary's error counts."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Driver(Protocol):
    async def open(self) -> None: ...
    async def one(self, i: int) -> None: ...
    async def close(self) -> None: ...


_JSON = {"Content-Type": "application/json"}


class HttpDriver:
    """Shardflow through the router: POST a W3 workflow with ``?wait=``, which answers with
    its outcome; long-poll its result if it has not finished by then. ``separate_result``:
    the start alone, then the long poll (two requests per workflow). ``url`` may name
    several routers, comma-separated: workflow ``i`` goes to router ``i`` modulo their
    number (start and long poll alike). Named ``SHARD=URL``, each router is the home of
    that shard (``router --executors-for``) and workflow ``i`` gets an ID on its router's
    shard (by the slot map of ``GET /v1/cluster``), as a client that knows the map would
    send it."""

    def __init__(self, url: str, workflow: str = "w3", separate_result: bool = False) -> None:
        entries = [u.strip() for u in url.split(",") if u.strip()]
        self.homes = [e.split("=", 1)[0] for e in entries] if "=" in url else []
        self.urls = [e.split("=", 1)[-1].rstrip("/") for e in entries]
        self.url = self.urls[0]
        self.workflow = workflow
        query = "" if separate_result else "?wait=30"
        self.start_urls = [u + "/v1/workflows" + query for u in self.urls]
        self.session: aiohttp.ClientSession | None = None
        self.owners: list[str] = []  # the shard of each slot, with homes

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        if self.homes:
            async with self.session.get(self.url + "/v1/cluster") as resp:
                self.owners = (await resp.json())["slot_owners"]
            if not set(self.homes) <= set(self.owners):
                raise LoadError("a home shard that owns no slot")

    def _id(self, i: int) -> str:
        """A new workflow ID; with homes, one on the shard of router ``i``'s home."""
        home = self.homes[i % len(self.homes)] if self.homes else None
        while True:
            wid = uuid.uuid4().hex
            if home is None or self.owners[slot_of(wid, len(self.owners))] == home:
                return wid

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def one(self, i: int) -> None:
        assert self.session is not None
        body = {"workflow": self.workflow, "input": make_input(i), "id": self._id(i)}
        url = self.urls[i % len(self.urls)]
        async with self.session.post(
            self.start_urls[i % len(self.urls)], data=json.dumps(body).encode(), headers=_JSON
        ) as resp:
            doc = json.loads(await resp.read())
            if resp.status not in (200, 201):
                raise LoadError(f"start {resp.status}")
        if doc["status"] in FINISHED:
            return
        while True:
            async with self.session.get(
                f"{url}/v1/workflows/{body['id']}/result", params={"timeout": "30"}
            ) as resp:
                await resp.read()
                if resp.status == 200:
                    return
                if resp.status != 202:
                    raise LoadError(f"result {resp.status}")


class DbosDriver(HttpDriver):
    """DBOS: POST the order to the app's own endpoint (loadtests/dbos_w3.py), which starts
    W3 under the given ID and answers with its result."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.start_url = self.url + "/w3"

    async def one(self, i: int) -> None:
        assert self.session is not None
        headers = {**_JSON, "Id": uuid.uuid4().hex}
        body = json.dumps(make_input(i)).encode()
        async with self.session.post(self.start_url, data=body, headers=headers) as resp:
            doc = json.loads(await resp.read())
            if resp.status != 200 or doc.get("notified") is not True:
                raise LoadError(f"dbos {resp.status}")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class Load:
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.latencies: list[float] = []
        self.finished_at: list[float] = []
        self.started = time.perf_counter()
        self.started_unix = time.time()
        self.deadline = math.inf
        self.errors = 0
        self.error_kinds: dict[str, int] = {}

    async def one(self, i: int, t0: float) -> None:
        try:
            await self.driver.one(i)
        except LoadError as exc:
            self.error(exc.kind)
            return
        except Exception as exc:  # any failure of the system under test is counted, not fatal
            self.error(type(exc).__name__)
            return
        now = time.perf_counter()
        self.latencies.append(now - t0)
        self.finished_at.append(now)

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def _begin(self, seconds: float) -> float:
        self.started = time.perf_counter()
        self.started_unix = time.time()
        self.deadline = self.started + seconds
        return self.started

    def stop(self) -> None:
        """End the phase now (SIGTERM): no new workflow starts; those under way finish."""
        self.deadline = time.perf_counter()

    async def closed(self, clients: int, seconds: float) -> float:
        counter = iter(range(10**12))

        async def worker() -> None:
            while time.perf_counter() < self.deadline:
                await self.one(next(counter), time.perf_counter())

        started = self._begin(seconds)
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - started

    async def open(self, rate: float, seconds: float, drain: float = 30.0) -> float:
        """Arrivals at ``rate`` for ``seconds``; those unfinished ``drain`` s later are errors.

        A system slower than the rate would otherwise hold the run for its whole backlog.
        """
        tasks = []
        started = self._begin(seconds)
        n = int(rate * seconds)
        for i in range(n):
            at = started + i / rate
            if at >= self.deadline:
                break
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one(i, at)))
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=drain)
            for task in late:
                task.cancel()
                self.error("unfinished")
            await asyncio.gather(*late, return_exceptions=True)
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
            "per_second": self.timeline(elapsed, 1.0),
            # For figures over a window of the caller's (wall clock, time.time()).
            "started_unix": round(self.started_unix, 3),
            "per_tenth": self.timeline(elapsed, 0.1),
        }

    def timeline(self, elapsed: float, step: float) -> list[int]:
        """Workflows completed in each ``step`` seconds of the phase (a timeline of dips)."""
        counts = [0] * max(1, math.ceil(elapsed / step))
        for at in self.finished_at:
            counts[min(len(counts) - 1, max(0, int((at - self.started) / step)))] += 1
        return counts


def rate_between(summary: dict[str, Any], t0: float, t1: float) -> float:
    """Completions per second of a phase between wall-clock times t0 and t1, from its
    tenth-of-a-second timeline (a tenth that straddles an end counts pro rata)."""
    if t1 <= t0:
        return 0.0
    total = 0.0
    for i, n in enumerate(summary["per_tenth"]):
        lo = summary["started_unix"] + i / 10
        overlap = min(lo + 0.1, t1) - max(lo, t0)
        if overlap > 0:
            total += n * overlap / 0.1
    return total / (t1 - t0)


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("closed", "open"), default="closed")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--drain", type=float, default=30.0, help="open loop: seconds to wait for stragglers"
    )


async def run(driver: Driver, args: argparse.Namespace) -> dict[str, Any]:
    """One phase of load through ``driver``, as the summary dict."""
    load = Load(driver)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, load.stop)
    await driver.open()
    try:
        if args.mode == "closed":
            elapsed = await load.closed(args.clients, args.seconds)
        else:
            elapsed = await load.open(args.rate, args.seconds, args.drain)
    finally:
        await driver.close()
    return load.summary(elapsed)


def prepare_process() -> None:
    """A load generator's own pauses must not count as the system's latency: uvloop, and
    no cyclic garbage collection (a short-lived process; reference counting frees the rest)."""
    import gc

    gc.disable()
    install_uvloop()


def install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def run_phase(driver: Driver, args: argparse.Namespace) -> None:
    """A load generator process's whole work: one phase, its summary as one JSON line."""
    prepare_process()
    print(json.dumps(asyncio.run(run(driver, args))), flush=True)


SYSTEMS = ("shardflow", "temporal", "rabbitmq", "dbos")


class TemporalDriver:
    """Starts W3 on Temporal and waits for its result (``execute_workflow``)."""

    def __init__(self, target: str) -> None:
        self.target = target

    async def open(self) -> None:
        from temporalio.client import Client

        self.client = await Client.connect(self.target)

    async def one(self, i: int) -> None:
        from loadtests.temporal_w3 import TASK_QUEUE

        await self.client.execute_workflow(
            "w3", make_input(i), id=uuid.uuid4().hex, task_queue=TASK_QUEUE
        )

    async def close(self) -> None:
        pass


def driver(system: str, target: str) -> Driver:
    if system == "shardflow":
        return HttpDriver(target)
    if system == "temporal":
        return TemporalDriver(target)
    if system == "rabbitmq":
        from loadtests.rabbit_w3 import RabbitDriver

        return RabbitDriver(target)
    if system == "dbos":
        return DbosDriver(target)
    raise ValueError(f"unknown system {system!r}: one of {', '.join(SYSTEMS)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", choices=SYSTEMS, default="shardflow")
    parser.add_argument(
        "--target",
        "--url",
        required=True,
        help="router URL (or several, comma-separated), Temporal HOST:PORT, AMQP URL or the "
        "DBOS app's URL",
    )
    parser.add_argument("--workflow", default="w3", help="the workflow a Shardflow router starts")
    parser.add_argument(
        "--separate-result",
        action="store_true",
        help="Shardflow: start, then long-poll the result (two requests), not a start with ?wait=",
    )
    add_load_arguments(parser)
    args = parser.parse_args()
    if args.system == "shardflow":
        run_phase(HttpDriver(args.target, args.workflow, args.separate_result), args)
    else:
        run_phase(driver(args.system, args.target), args)


if __name__ == "__main__":
    main()
