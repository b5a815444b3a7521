"""A workflow ID is unique across the cluster, whatever its routing key.

A start placed by a routing key other than its ID first reserves the ID in the directory
of the ID's home shard (``place``); a start under the ID itself that meets such a row is
answered by the shard the row names (``resolve``). Either way the answers are those of a
repeated start: the existing workflow for the same input, a conflict for another. When
the routing key is the ID (the common case) nothing is added: no row, no round trip.

A crash between the reservation and the start leaves an orphan row: the next start of
that ID finds no workflow under the row's key and takes the row over (or drops it), and
the leading coordinator sweeps the orphans it finds (``coordinator/directory.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace

from shardflow.infra.errors import OverloadedError
from shardflow.router.view import ClusterView
from shardflow.shard.client import ShardClient, StartRequest

# Starts of an ID that meet a directory row once more after being sent elsewhere (the
# row changed meanwhile) before the router answers 429.
ATTEMPTS = 3
# A row whose workflow is not (yet) under its key is an orphan only once this old (in
# seconds): a start still on its way has landed by then. Until then a second start of
# the ID waits for the first (at most WAIT seconds, then 429: retry).
ORPHAN_AGE = 2.0
WAIT = 3.0
POLL = 0.05


async def place(view: ClusterView, req: StartRequest) -> StartRequest:
    """The start to send: under the routing key that holds the request's ID."""
    key, wid = req.routing_key, str(req.id)
    if key is None or key == wid:
        return req
    new_key: str = key

    async def claim(_: str, home: ShardClient) -> str:
        return await home.directory_claim(wid, new_key)

    holder = await view.on_shard(wid, claim)
    if holder == key:
        return req
    if holder == wid:
        return replace(req, routing_key=None)  # lives on its home shard, by its own key

    async def take_over(_: str, home: ShardClient) -> bool:
        return await home.directory_move(wid, holder, new_key, ORPHAN_AGE)

    if await _held_or_taken(view, wid, holder, take_over) == "held":
        return replace(req, routing_key=holder)  # the start answers existing or conflict
    return req  # an orphan (a crash between the writes), taken over


async def resolve(view: ClusterView, req: StartRequest) -> StartRequest:
    """The start to send instead of one under the ID itself that met a directory row
    (IdElsewhereError): under the row's key, or under the ID again once an orphan row is
    dropped."""
    wid = str(req.id)

    async def holder_of(_: str, home: ShardClient) -> str | None:
        return await home.directory_holder(wid)

    holder = await view.on_shard(wid, holder_of)
    if holder is None or holder == wid:
        return req

    async def release(_: str, home: ShardClient, holder: str = holder) -> bool:
        return await home.directory_release(wid, holder, ORPHAN_AGE)

    if await _held_or_taken(view, wid, holder, release) == "held":
        return replace(req, routing_key=holder)
    return req  # an orphan row, dropped


async def _held_or_taken(
    view: ClusterView,
    wid: str,
    holder: str,
    take: Callable[[str, ShardClient], Awaitable[bool]],
) -> str:
    """ "held" once the workflow is found under ``holder``, "taken" once ``take`` succeeds
    on the ID's home shard (the row is an orphan), whichever comes first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        if await _holds(view, holder, wid):
            return "held"
        if await view.on_shard(wid, take):
            return "taken"
        if loop.time() > deadline:
            raise OverloadedError(f"workflow ID {wid!r} is being started concurrently; retry")
        await asyncio.sleep(POLL)


async def _holds(view: ClusterView, routing_key: str, wid: str) -> bool:
    async def look(_: str, client: ShardClient) -> bool:
        return await client.locate(wid) is not None

    return await view.on_shard(routing_key, look)
