"""``/v1/schedules``: cron schedules made, listed and deleted at run time (the catalog's)."""

from __future__ import annotations

import json

from aiohttp import web

from shardflow.catalog import schedules
from shardflow.router import requests as rq
from shardflow.router.handlers import check_known, view_of


async def create(request: web.Request) -> web.Response:
    view = view_of(request)
    body = rq.schedule_body(await rq.json_body(request))
    await check_known(view, body.workflow)
    payload = None if body.input is None else json.dumps(body.input)
    doc = await schedules.create(view.catalog, body.name, body.workflow, body.spec, payload)
    return web.json_response(doc, status=201)


async def list_all(request: web.Request) -> web.Response:
    return web.json_response({"schedules": await schedules.list_all(view_of(request).catalog)})


async def get(request: web.Request) -> web.Response:
    doc = await schedules.get(view_of(request).catalog, request.match_info["name"])
    return web.json_response(doc)


async def delete(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await schedules.delete(view_of(request).catalog, name)
    return web.json_response({"name": name, "deleted": True})
