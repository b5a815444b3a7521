"""The aiohttp application of the router, its middlewares and its process entry point."""

from __future__ import annotations

import functools
import hmac
import json
import logging
import time
import zoneinfo
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from shardflow.metrics.exporter import exposition
from shardflow.metrics.router import RouterMetrics
from shardflow.router import handlers, schedules
from shardflow.router.errors import HttpError, error_response, from_exception
from shardflow.router.settings import RouterSettings
from shardflow.router.view import ClusterView

log = logging.getLogger("shardflow.router")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SETTINGS = web.AppKey("settings", RouterSettings)
LOOPBACK = ("127.0.0.1", "::1", "localhost")
METRICS = web.AppKey("metrics", RouterMetrics)


def openapi_document() -> dict[str, Any]:
    """The API's document as shipped (a fresh copy: callers may change it)."""
    doc: dict[str, Any] = json.loads(_openapi_text())
    return doc


@functools.cache
def _openapi_text() -> str:
    return resources.files("shardflow.router").joinpath("openapi.json").read_text("utf-8")


@functools.cache
def _time_zones() -> list[str]:
    return sorted(zoneinfo.available_timezones())


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Metrics, overload (429), auth (401) and the JSON error envelope for everything."""
    settings, metrics = request.app[SETTINGS], request.app[METRICS]
    started = time.perf_counter()
    inflight = metrics.inflight._value.get()
    metrics.inflight.inc()
    try:
        if inflight >= settings.max_inflight:
            response: web.StreamResponse = error_response(
                "overloaded", "too many requests in flight; retry after a moment"
            )
        elif (refused := _auth_failure(request, settings)) is not None:
            response = error_response(*refused)
        else:
            response = await handler(request)
    except Exception as exc:  # every error becomes a JSON answer, never a traceback
        response = from_exception(exc)
        if response.status == 405:
            response.headers["Allow"] = _allowed(request) or response.headers.get("Allow", "")
    finally:
        metrics.inflight.dec()
    metrics.request_duration.labels(_route_name(request), str(response.status)).observe(
        time.perf_counter() - started
    )
    return response


# Endpoints that change the cluster: they take an admin token (--admin-tokens).
ADMIN_ROUTES = frozenset(
    {
        ("POST", "/v1/cluster/shards"),
        ("POST", "/v1/cluster/shards/{id}/drain"),
        ("DELETE", "/v1/cluster/shards/{id}"),
        ("POST", "/v1/cluster/rebalance"),
        ("POST", "/v1/schedules"),
        ("DELETE", "/v1/schedules/{name}"),
    }
)


def _allowed(request: web.Request) -> str:
    """The methods of the route written exactly as the request's path, when there is one:
    /v1/workflows/batch takes POST, although /v1/workflows/{id} would match it too."""
    methods = {
        r.method
        for r in request.app.router.routes()
        if r.resource is not None and r.resource.canonical == request.path
    }
    return ",".join(sorted(methods))


def _auth_failure(request: web.Request, settings: RouterSettings) -> tuple[str, str] | None:
    """Why the request is refused (code, message), or None. Admin endpoints need an admin
    token, and are closed (403) when none is configured; the others need a token of
    either kind when tokens are configured, and are open otherwise."""
    if not request.path.startswith("/v1/") or request.path == "/v1/openapi.json":
        return None
    presented = _bearer(request)
    if (request.method, _route_name(request)) in ADMIN_ROUTES:
        if not settings.admin_tokens:
            return "forbidden", "admin endpoints are off: start the router with --admin-tokens"
        if _matches(presented, settings.admin_tokens):
            return None
        if _matches(presented, settings.tokens):
            return "forbidden", "this endpoint takes an admin token"
        return "unauthorized", "missing or wrong admin bearer token"
    if not settings.tokens or _matches(presented, [*settings.tokens, *settings.admin_tokens]):
        return None
    return "unauthorized", "missing or wrong bearer token"


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _matches(presented: str | None, tokens: list[str]) -> bool:
    """Constant-time comparison of bytes: any header value, ASCII or not, is just wrong."""
    if presented is None:
        return False
    given = presented.encode("utf-8", "replace")
    return any(hmac.compare_digest(given, t.encode("utf-8", "replace")) for t in tokens)


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if not request.app[handlers.VIEW].ready:
        raise HttpError("shard_unavailable", "no slot map loaded yet")
    return web.json_response({"status": "ready"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    return exposition(request.app[METRICS].registry, request)


async def openapi(request: web.Request) -> web.Response:
    """The document as this cluster answers it: a start or a schedule names one of the
    workflows registered now, and a schedule's time zone is one the router knows."""
    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    names = sorted(request.app[handlers.VIEW].registry)
    if names:
        for schema in ("StartRequest", "ScheduleRequest"):
            schemas[schema]["properties"]["workflow"]["enum"] = names
    schemas["ScheduleRequest"]["properties"]["timezone"]["enum"] = _time_zones()
    return web.json_response(doc)


# The console's files (router/ui): served from the package, never from elsewhere.
UI_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
UI_FILES = frozenset({"index.html", "app.js", "style.css"})


async def ui(request: web.Request) -> web.Response:
    """The web console (/ui): static files over the public API; they hold no data."""
    name = request.match_info.get("file", "index.html")
    if name not in UI_FILES:
        raise HttpError("not_found", f"no console file {name[:40]!r}")
    body = resources.files("shardflow.router").joinpath("ui", name).read_bytes()
    kind = UI_TYPES[name[name.rindex(".") :]]
    return web.Response(
        body=body, content_type=kind, charset="utf-8", headers={"Cache-Control": "no-cache"}
    )


def build_app(
    settings: RouterSettings, view: ClusterView, metrics: RouterMetrics
) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[handlers.VIEW] = view
    r = app.router
    r.add_post("/v1/workflows", handlers.start)
    r.add_get("/v1/workflows", handlers.list_workflows)
    r.add_post("/v1/workflows/batch", handlers.start_batch)
    r.add_get("/v1/workflows/{id}", handlers.get_workflow)
    r.add_get("/v1/workflows/{id}/result", handlers.get_result)
    r.add_post("/v1/workflows/{id}/events/{name}", handlers.send_event)
    r.add_post("/v1/workflows/{id}/cancel", handlers.cancel)
    r.add_post("/v1/workflows/{id}/retry", handlers.retry)
    r.add_post("/v1/schedules", schedules.create)
    r.add_get("/v1/schedules", schedules.list_all)
    r.add_get("/v1/schedules/{name}", schedules.get)
    r.add_delete("/v1/schedules/{name}", schedules.delete)
    r.add_get("/v1/stats/workflows", handlers.workflow_counts)
    r.add_get("/v1/cluster", handlers.cluster)
    r.add_post("/v1/cluster/shards", handlers.add_shard)
    r.add_post("/v1/cluster/shards/{id}/drain", handlers.drain_shard)
    r.add_delete("/v1/cluster/shards/{id}", handlers.remove_shard)
    r.add_post("/v1/cluster/rebalance", handlers.rebalance)
    r.add_get("/v1/openapi.json", openapi)
    r.add_get("/ui", ui)
    r.add_get("/ui/{file}", ui)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics_endpoint)
    return app


class RouterServer:
    """A running router: the cluster view plus the HTTP site (used by the CLI and tests)."""

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.metrics = RouterMetrics()
        self.view: ClusterView | None = None
        self.runner: web.AppRunner | None = None
        self.port = settings.port

    async def start(self) -> None:
        self.view = await ClusterView.open(self.settings, self.metrics)
        if self.view.local is not None:  # the in-process executors' metrics, served here
            self.metrics.registry.register(self.view.local)
        app = build_app(self.settings, self.view, self.metrics)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.port)
        await site.start()
        if not self.settings.tokens and self.settings.host not in LOOPBACK:
            log.warning(
                "event=router_unauthenticated host=%s message=%s",
                self.settings.host,
                json.dumps("listening beyond loopback with no --tokens: anyone can use /v1"),
            )
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("event=router_started url=http://%s:%d", self.settings.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.view is not None:
            await self.view.close()
