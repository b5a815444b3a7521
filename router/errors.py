"""HTTP errors: ``{"error": {"code", "message"}}`` with a stable code; never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from shardflow.infra.dbfaults import is_unavailable
from shardflow.infra.errors import ShardflowError

log = logging.getLogger("shardflow.router")

STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "invalid_json": 400,
    "not_serializable": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "cluster_conflict": 409,
    "catalog_error": 422,
    "plan_error": 409,
    "finished": 409,
    "too_large": 413,
    "unknown_workflow": 422,
    "invalid_id": 422,
    "invalid_schedule": 400,
    "overloaded": 429,
    "shard_unavailable": 503,
    "slot_moved": 503,
    "internal": 500,
}
RETRY_AFTER = {429: "1", 503: "1"}


class UnauthorizedError(ShardflowError):
    code = "unauthorized"


class ForbiddenError(ShardflowError):
    """An admin endpoint without an admin token (or with admin tokens not configured)."""

    code = "forbidden"


class RequestTooLargeError(ShardflowError):
    code = "too_large"


class HttpError(ShardflowError):
    """An error answered as is: its ``code`` picks the HTTP status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def error_response(code: str, message: str, **extra: Any) -> web.Response:
    status = STATUS_BY_CODE.get(code, 400)
    headers = {"Retry-After": RETRY_AFTER[status]} if status in RETRY_AFTER else None
    body = {"error": {"code": code, "message": message, **extra}}
    return web.json_response(body, status=status, headers=headers)


def from_exception(exc: BaseException) -> web.Response:
    if isinstance(exc, ShardflowError):
        return error_response(exc.code, exc.message)
    if isinstance(exc, web.HTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status, "bad_request"
        )
        message = {
            404: "no such route; see /v1/openapi.json",
            405: "method not allowed on this route; see /v1/openapi.json",
            413: "request body too large",
        }.get(exc.status, exc.reason)
        response = error_response(code, message)
        if "Allow" in exc.headers:  # a 405 names the methods the route takes (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    if is_unavailable(exc):
        return error_response("shard_unavailable", f"a shard is unavailable: {exc!r}")
    log.exception("event=internal_error")
    return error_response("internal", "internal error; it was logged")
