"""Serve a CollectorRegistry on /metrics over aiohttp, with /healthz for probes."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder


def exposition(registry: CollectorRegistry, request: web.Request) -> web.Response:
    """The registry in the format the scraper asks for: OpenMetrics (which carries the
    histograms' trace exemplars) when its Accept header names it, else Prometheus text."""
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encode(registry), headers={"Content-Type": content_type})


async def serve_metrics(
    registry: CollectorRegistry, host: str, port: int
) -> tuple[web.AppRunner, int]:
    async def handle(request: web.Request) -> web.Response:
        return exposition(registry, request)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)
