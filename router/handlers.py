"""The HTTP API v1 (see router/openapi.json)."""

from __future__ import annotations

import asyncio
import heapq
import json
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from shardflow.catalog import admin as operations
from shardflow.infra import tracing
from shardflow.infra.errors import (
    IdElsewhereError,
    OverloadedError,
    ResultTimeoutError,
    ShardflowError,
    SlotMovedError,
    WorkflowNotFoundError,
)
from shardflow.router import directory
from shardflow.router import requests as rq
from shardflow.router.errors import HttpError
from shardflow.router.local import start_each
from shardflow.router.view import ClusterView
from shardflow.shard.client import ShardClient, StartRequest, StartResult

VIEW = web.AppKey("view", ClusterView)


def view_of(request: web.Request) -> ClusterView:
    return request.app[VIEW]


async def check_known(view: ClusterView, name: str) -> None:
    if not await view.knows(name):
        raise HttpError(
            "unknown_workflow",
            f"unknown workflow {name!r}: no executor has registered it (known: "
            f"{', '.join(sorted(view.registry)) or 'none'})",
        )


def _request(body: rq.StartBody, traceparent: str | None) -> StartRequest:
    wid = body.id if body.id is not None else uuid.uuid4().hex
    rq.check_id(wid)
    if body.routing_key is not None:
        rq.check_id(body.routing_key, "routing key")
    return StartRequest(
        body.workflow,
        body.input,
        wid,
        body.routing_key,
        priority=body.priority,
        traceparent=traceparent,
    )


def _traceparent(request: web.Request) -> str | None:
    """The W3C trace context a request brings, stored with what it starts (a malformed
    header is ignored, as the W3C recommendation asks)."""
    return tracing.parse_traceparent(request.headers.get("traceparent"))


def _start_doc(result: StartResult, shard: str) -> dict[str, Any]:
    return {"id": result.id, "shard": shard, "status": result.status}


async def start(request: web.Request) -> web.Response:
    view = view_of(request)
    wait = rq.float_param(request, "wait", 0.0, view.settings.max_result_wait)
    body = rq.start_body(await rq.json_body(request))
    await check_known(view, body.workflow)
    with tracing.span(
        f"start {body.workflow}", _traceparent(request), {"shardflow.workflow.name": body.workflow}
    ) as traceparent:
        req = _request(body, traceparent)
        shard, result = await _start_unique(view, req)
    if result.conflict:
        raise HttpError("conflict", f"workflow {result.id!r} exists with another name or input")
    doc = _start_doc(result, shard)
    if wait > 0:
        # Start and wait in one request (?wait=s): the result document when the workflow
        # finishes in time, else the start's answer (then follow it with GET .../result).
        doc = await _outcome(request, result.id, shard, wait, req.routing_key) or doc
    return web.json_response(doc, status=201 if result.created else 200)


async def _start_unique(view: ClusterView, req: StartRequest) -> tuple[str, StartResult]:
    """Start ``req`` where its ID is unique across the cluster (router/directory.py)."""
    req = await directory.place(view, req)
    for _ in range(directory.ATTEMPTS):

        async def call(
            shard: str, _: ShardClient, req: StartRequest = req
        ) -> tuple[str, StartResult]:
            return shard, await view.batchers[shard].start(req)

        try:
            return await view.on_shard(req.routing_key or str(req.id), call)
        except IdElsewhereError:
            req = await directory.resolve(view, req)
    raise OverloadedError(f"workflow ID {req.id!r} is being started concurrently; retry")


async def start_batch(request: web.Request) -> web.Response:
    view = view_of(request)
    items = rq.batch_body(await rq.json_body(request), view.settings.max_batch)
    traceparent = _traceparent(request)  # the batch's: each start of it joins that trace
    out: list[dict[str, Any] | None] = [None] * len(items)
    by_shard: dict[str, list[tuple[int, StartRequest]]] = defaultdict(list)
    requests: list[tuple[int, StartRequest]] = []
    for i, item in enumerate(items):
        try:
            body = rq.start_body(item, f"workflows[{i}]")
            await check_known(view, body.workflow)
            requests.append((i, _request(body, traceparent)))
        except ShardflowError as exc:
            out[i] = {"error": {"code": exc.code, "message": exc.message}}

    async def placed(i: int, req: StartRequest) -> None:
        try:
            req = await directory.place(view, req)
        except ShardflowError as exc:
            out[i] = {"error": {"code": exc.code, "message": exc.message}}
            return
        by_shard[view.shard_for(req.routing_key or str(req.id))].append((i, req))

    # The first start of each ID goes in the batch; a repeat of an ID in the same batch
    # waits for it, then is answered like any repeated start (existing, or a conflict).
    seen: set[str] = set()
    firsts: list[tuple[int, StartRequest]] = []
    repeats: list[tuple[int, StartRequest]] = []
    for i, req in requests:
        (repeats if str(req.id) in seen else firsts).append((i, req))
        seen.add(str(req.id))
    await asyncio.gather(*(placed(i, req) for i, req in firsts))

    def record(i: int, shard: str, result: StartResult) -> None:
        if result.conflict:
            out[i] = {
                "id": result.id,
                "error": {"code": "conflict", "message": "exists with another name or input"},
            }
        else:
            out[i] = {**_start_doc(result, shard), "created": result.created}

    async def one(i: int, req: StartRequest) -> None:
        try:
            shard, result = await _start_unique(view, req)
        except ShardflowError as exc:
            out[i] = {"error": {"code": exc.code, "message": exc.message}}
            return
        record(i, shard, result)

    async def one_shard(shard: str, group: list[tuple[int, StartRequest]]) -> None:
        try:
            requests = [r for _, r in group]
            outcomes = await start_each(view.local, shard, view.client(shard).pool, requests)
        except ShardflowError as exc:
            for i, _ in group:
                out[i] = {"error": {"code": exc.code, "message": exc.message}}
            return
        moved = []
        for (i, req), outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, SlotMovedError | IdElsewhereError):
                moved.append((i, req))  # started on its own, following the slot or the ID
            elif isinstance(outcome, ShardflowError):
                out[i] = {"error": {"code": outcome.code, "message": outcome.message}}
            else:
                record(i, shard, outcome)
        await asyncio.gather(*(one(i, req) for i, req in moved))

    await asyncio.gather(*(one_shard(s, g) for s, g in by_shard.items()))
    for i, req in repeats:
        await one(i, req)
    return web.json_response({"results": out})


async def _locate(
    request: web.Request, wid: str | None = None, routing_key: str | None = None
) -> tuple[str, str]:
    """The workflow named in the path (or ``wid``) and the shard holding it."""
    view = view_of(request)
    wid = request.match_info["id"] if wid is None else wid
    try:
        rq.check_id(wid)
    except HttpError:
        raise WorkflowNotFoundError(f"unknown workflow ID {wid[:40]!r}") from None
    shard = await view.locate(wid, routing_key or rq.routing_key_param(request))
    if shard is None:
        raise WorkflowNotFoundError(f"unknown workflow ID {wid!r}")
    return wid, shard


async def get_workflow(request: web.Request) -> web.Response:
    wid, shard = await _locate(request)
    doc = await view_of(request).client(shard).status(wid)
    doc["shard"] = shard
    for key in ("routing_key", "parent", "finished_at", "wake_at"):
        doc.pop(key, None)
    return web.json_response(doc)


# Shards a result wait follows a workflow across (each hop: its slot moved meanwhile).
MAX_HOPS = 8


async def get_result(request: web.Request) -> web.Response:
    view = view_of(request)
    timeout = rq.float_param(request, "timeout", 0.0, view.settings.max_result_wait)
    wid = request.match_info["id"]
    try:
        rq.check_id(wid)
    except HttpError:
        raise WorkflowNotFoundError(f"unknown workflow ID {wid[:40]!r}") from None
    routing_key = rq.routing_key_param(request)
    shard = view.shard_for(routing_key or wid)
    doc = await _outcome(request, wid, shard, timeout, routing_key)
    if doc is None:
        status = await view.client(shard).locate(wid)
        return web.json_response({"id": wid, "status": status, "shard": shard}, status=202)
    return web.json_response(doc)


async def _outcome(
    request: web.Request, wid: str, shard: str, timeout: float, routing_key: str | None
) -> dict[str, Any] | None:
    """The workflow's result document once it finishes within ``timeout`` s, else None."""
    view = view_of(request)
    deadline = asyncio.get_running_loop().time() + timeout
    hops = 0
    while True:
        # The hot path waits on the hashed shard without looking the ID up first. A
        # workflow found nowhere there is looked for on every shard; one whose slot moves
        # away while it is waited for is followed to its new shard (the old one drops it).
        try:
            outcome = await view.client(shard).wait(
                wid, max(0.0, deadline - asyncio.get_running_loop().time())
            )
            break
        except ResultTimeoutError:
            return None
        except WorkflowNotFoundError:
            hops += 1
            if hops > MAX_HOPS:
                raise
            wid, shard = await _locate(request, wid, routing_key)
    return {
        "id": wid,
        "status": outcome["status"],
        "shard": shard,
        "output": _json(outcome["output"]),
        "error": _json(outcome["error"]),
    }


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


async def send_event(request: web.Request) -> web.Response:
    payload, dedup = rq.event_body(await rq.json_body(request))
    name = request.match_info["name"]
    if not name or len(name) > 200 or any(ord(c) < 32 for c in name):
        raise HttpError("bad_request", "an event name is 1 to 200 characters, no control ones")
    wid, shard = await _locate(request)

    async def call(_: str, client: ShardClient) -> bool:
        return await client.send_event(wid, name, payload, dedup_id=dedup)

    delivered = await view_of(request).on_located(wid, shard, call)
    return web.json_response({"id": wid, "event": name, "delivered": delivered}, status=202)


async def _status_change(
    request: web.Request, change: Callable[[ShardClient, str], Awaitable[str]]
) -> web.Response:
    """Cancel or retry: one call on the workflow's shard, answered with its new status."""
    wid, shard = await _locate(request)

    async def call(_: str, client: ShardClient) -> str:
        return await change(client, wid)

    status = await view_of(request).on_located(wid, shard, call)
    return web.json_response({"id": wid, "status": status, "shard": shard}, status=202)


async def cancel(request: web.Request) -> web.Response:
    return await _status_change(request, ShardClient.cancel)


async def retry(request: web.Request) -> web.Response:
    return await _status_change(request, ShardClient.retry)


async def list_workflows(request: web.Request) -> web.Response:
    view = view_of(request)
    limit = rq.int_param(request, "limit", 100, 1, 500)
    after = rq.decode_cursor(request.query.get("cursor"))
    status = rq.status_param(request)
    name = request.query.get("workflow")
    filters = rq.list_filters(request)
    shards = rq.shards_param(request, list(view.map.shards) if view.map else [])
    pages = await asyncio.gather(
        *(
            view.client(s).list_page(
                after=after, status=status, workflow=name, limit=limit, filters=filters
            )
            for s in shards
        )
    )
    merged = heapq.merge(
        *[[(c, i, s, doc) for c, i, doc in page] for s, page in zip(shards, pages, strict=True)],
        reverse=filters.newest,
    )
    items = [row for _, row in zip(range(limit), merged, strict=False)]
    docs = [{**doc, "shard": s} for _, _, s, doc in items]
    for doc in docs:
        doc.pop("steps", None)
    cursor = rq.encode_cursor(items[-1][0], items[-1][1]) if len(items) == limit else None
    return web.json_response({"workflows": docs, "next_cursor": cursor})


async def workflow_counts(request: web.Request) -> web.Response:
    """Workflows by status, in all and by shard (of one name with ?workflow=)."""
    view = view_of(request)
    name = request.query.get("workflow")
    shards = rq.shards_param(request, list(view.map.shards) if view.map else [])
    counts = await asyncio.gather(*(view.client(s).counts(name) for s in shards))
    total: dict[str, int] = dict.fromkeys(rq.STATUSES, 0)
    for per_shard in counts:
        for status, n in per_shard.items():
            total[status] = total.get(status, 0) + n
    by_shard = {
        s: {**dict.fromkeys(rq.STATUSES, 0), **c} for s, c in zip(shards, counts, strict=True)
    }
    return web.json_response({"counts": total, "shards": by_shard})


async def cluster(request: web.Request) -> web.Response:
    view = view_of(request)
    await view.refresh()
    doc = await operations.status(view.catalog)
    ids = [s["id"] for s in doc["shards"]]
    health = await asyncio.gather(*(view.client(s).ping() for s in ids))
    for shard, healthy in zip(doc["shards"], health, strict=True):
        shard["healthy"] = healthy
    doc["workflows"] = {name: versions for name, versions in sorted(view.registry.items())}
    doc["slot_owners"] = list(view.map.owners) if view.map else []  # shard of each slot
    return web.json_response(doc)


async def add_shard(request: web.Request) -> web.Response:
    body = await rq.json_body(request)
    if (
        not isinstance(body, dict)
        or set(body) != {"id", "dsn"}
        or not all(isinstance(body[k], str) and body[k] for k in ("id", "dsn"))
    ):
        raise HttpError("bad_request", 'the body must be {"id": str, "dsn": str}')
    view = view_of(request)
    await view.catalog.add_shard(body["id"], body["dsn"])
    await view.refresh(force=True)
    return web.json_response({"id": body["id"], "state": "active", "slots": 0}, status=201)


async def drain_shard(request: web.Request) -> web.Response:
    moves = await operations.drain(view_of(request).catalog, request.match_info["id"])
    return web.json_response({"id": request.match_info["id"], "moves": moves}, status=202)


async def remove_shard(request: web.Request) -> web.Response:
    await operations.remove(view_of(request).catalog, request.match_info["id"])
    await view_of(request).refresh(force=True)
    return web.json_response({"id": request.match_info["id"], "removed": True})


async def rebalance(request: web.Request) -> web.Response:
    return web.json_response(
        {"moves": await operations.rebalance(view_of(request).catalog)}, status=202
    )
