"""The comparison's one load generator: the same closed and open loops for every system.

``python -m loadtests.loadgen --system shardflow|temporal|rabbitmq --target T --mode ...``
runs one phase in its own process and prints one JSON line (``shardflow.loadgen``'s
summary). The baselines' clients are asyncio libraries (temporalio, aio-pika) that do not
run well under locust's gevent, so every system in the comparison is driven from here;
locust keeps Shardflow's HTTP scenarios (``loadtests/locustfile.py``).
"""

from __future__ import annotations

import argparse
import uuid

from examples.bench import make_input
from shardflow.loadgen import Driver, HttpDriver, add_load_arguments, run_phase

SYSTEMS = ("shardflow", "temporal", "rabbitmq")


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
    raise ValueError(f"unknown system {system!r}: one of {', '.join(SYSTEMS)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", choices=SYSTEMS, required=True)
    parser.add_argument(
        "--target", required=True, help="router URL, Temporal HOST:PORT or AMQP URL"
    )
    add_load_arguments(parser)
    args = parser.parse_args()
    run_phase(driver(args.system, args.target), args)


if __name__ == "__main__":
    main()
