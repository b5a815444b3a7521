"""The OpenAPI document matches the routes (the fuzz against it is in test_dev.py)."""

from __future__ import annotations

from shardflow.router.app import build_app, openapi_document
from shardflow.router.settings import RouterSettings

DOC = openapi_document()


def test_openapi_paths_match_the_routes():
    settings = RouterSettings.load({"catalog": "postgresql://unused/x"}, env={})
    app = build_app(settings, None, None)  # type: ignore[arg-type]
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {(m, p) for p, ops in DOC["paths"].items() for m in ops}
    assert routes == documented
    assert DOC["openapi"].startswith("3.")
    for path, ops in DOC["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
