"""W3 on RabbitMQ: three durable queues chained by one aio-pika worker.

A client publishes the order to ``w3.reserve`` with a correlation ID and its reply
queue. The worker consumes each step's queue with manual acks: it runs the step,
publishes the order and the results so far to the next queue (or the reply to the
client after the last step) as a persistent message, waits for the broker's publisher
confirm, and only then acks the message it consumed. A crash between the two repeats
the step, never loses it: RabbitMQ's at-least-once, the durable way.

``python -m loadtests.rabbit_w3 --url amqp://...`` runs the worker until stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from examples.bench import make_input
from loadtests.loadgen import LoadError, install_uvloop

QUEUES = ("w3.reserve", "w3.charge", "w3.notify")
PREFETCH = 256
Step = Callable[[dict[str, Any]], dict[str, Any]]

STEPS: dict[str, Step] = {
    "w3.reserve": lambda order: {"reserved": order["order_id"]},
    "w3.charge": lambda order: {"charged": order["amount"]},
    "w3.notify": lambda order: {"notified": True},
}


def _message(
    body: dict[str, Any], *, correlation_id: str, reply_to: str | None
) -> aio_pika.Message:
    return aio_pika.Message(
        json.dumps(body).encode(),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        correlation_id=correlation_id,
        reply_to=reply_to,
        content_type="application/json",
    )


async def _declare(channel: aio_pika.abc.AbstractChannel) -> list[aio_pika.abc.AbstractQueue]:
    return [await channel.declare_queue(name, durable=True) for name in QUEUES]


async def serve(url: str) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=PREFETCH)
    queues = await _declare(channel)
    exchange = channel.default_exchange

    def handler(index: int) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        name = QUEUES[index]
        step = STEPS[name]

        async def handle(message: AbstractIncomingMessage) -> None:
            state = json.loads(message.body)
            state["results"].update(step(state["order"]))
            last = index == len(QUEUES) - 1
            assert message.correlation_id is not None
            out = _message(
                state["results"] if last else state,
                correlation_id=message.correlation_id,
                reply_to=message.reply_to,
            )
            target = message.reply_to if last else QUEUES[index + 1]
            assert target is not None
            await exchange.publish(out, routing_key=target)  # waits for the confirm
            await message.ack()

        return handle

    for index, queue in enumerate(queues):
        await queue.consume(handler(index))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("worker ready", flush=True)
    await stop.wait()
    await connection.close()


class RabbitDriver:
    """The client side: publish an order, await its reply by correlation ID."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout
        self.waiting: dict[str, asyncio.Future[bytes]] = {}

    async def open(self) -> None:
        self.connection = await aio_pika.connect(self.url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        await _declare(self.channel)
        self.replies = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await self.replies.consume(self._reply, no_ack=True)

    async def _reply(self, message: AbstractIncomingMessage) -> None:
        future = self.waiting.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)

    async def one(self, i: int) -> None:
        cid = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[cid] = future
        body = {"order": make_input(i), "results": {}}
        try:
            await self.channel.default_exchange.publish(
                _message(body, correlation_id=cid, reply_to=self.replies.name),
                routing_key=QUEUES[0],
            )
            reply = json.loads(await asyncio.wait_for(future, self.timeout))
        finally:
            self.waiting.pop(cid, None)
        if "notified" not in reply:
            raise LoadError("bad reply")

    async def close(self) -> None:
        await self.connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="amqp://user:password@host:port/")
    install_uvloop()  # as Shardflow's own processes run
    asyncio.run(serve(parser.parse_args().url))


if __name__ == "__main__":
    main()
