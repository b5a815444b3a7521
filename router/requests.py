"""Parsing and validating request bodies and query parameters (400 / 413 / 422)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from shardflow.router.errors import HttpError
from shardflow.shard.client import MAX_PRIORITY, ListFilters
from shardflow.shard.cron import ScheduleSpec
from shardflow.shard.model import FINISHED, SUSPENDED

# C0 control characters and DEL: not allowed in IDs (the shard's check is [[:cntrl:]]).
# Control characters (C0, DEL and C1): refused in IDs and keys, as the shard's SQL does.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

STATUSES = ("pending", "running", *SUSPENDED, *FINISHED)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every body (json.loads with an option builds a new one per call).
_decoder = json.JSONDecoder(parse_constant=_no_constants)


async def json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise HttpError("invalid_json", "the request body must be a JSON document")
    try:
        # What json.loads does with bytes: UTF-8, -16 or -32, told by the first bytes.
        return _decoder.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError("invalid_json", f"the request body is not valid JSON: {exc}") from None


def _field(body: dict[str, Any], name: str, kind: type, required: bool = False) -> Any:
    """A field of ``kind``; absent (None) when optional. An explicit null is not absent:
    the document says each field's type, and null is none of them."""
    if name not in body:
        if required:
            raise HttpError("bad_request", f"field {name!r} is required")
        return None
    value = body[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise HttpError("bad_request", f"field {name!r} must be a {kind.__name__}")
    return value


def _only(body: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise HttpError(
            "bad_request",
            f"unknown field(s) {', '.join(unknown)} in {what}; allowed: {', '.join(allowed)}",
        )


@dataclass(frozen=True, slots=True)
class StartBody:
    workflow: str
    input: Any
    id: str | None
    routing_key: str | None
    priority: int = 0


def start_body(value: Any, what: str = "the request body") -> StartBody:
    if not isinstance(value, dict):
        raise HttpError("bad_request", f"{what} must be a JSON object")
    _only(value, ("workflow", "input", "id", "routing_key", "priority"), what)
    # null is the default priority (the document says nullable): a client may always send it
    priority = None if value.get("priority") is None else _field(value, "priority", int)
    if priority is not None and not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise HttpError(
            "bad_request", f"field 'priority' must be from {-MAX_PRIORITY} to {MAX_PRIORITY}"
        )
    return StartBody(
        _field(value, "workflow", str, required=True),
        value.get("input"),
        _field(value, "id", str),
        _field(value, "routing_key", str),
        priority or 0,
    )


@dataclass(frozen=True, slots=True)
class ScheduleBody:
    name: str
    workflow: str
    spec: ScheduleSpec
    input: Any


def schedule_body(value: Any) -> ScheduleBody:
    if not isinstance(value, dict):
        raise HttpError("bad_request", "the request body must be a JSON object")
    _only(value, ("name", "workflow", "cron", "timezone", "overlap", "input"), "the request body")
    return ScheduleBody(
        _field(value, "name", str, required=True),
        _field(value, "workflow", str, required=True),
        ScheduleSpec(
            _field(value, "cron", str, required=True),
            _field(value, "timezone", str) or "UTC",
            _field(value, "overlap", str) or "skip",
        ),
        value.get("input"),
    )


def check_id(value: str, what: str = "workflow ID") -> None:
    if not value or len(value) > 200 or _CONTROL.search(value):
        raise HttpError(
            "invalid_id",
            f"invalid {what}: it must be 1 to 200 characters without control characters",
        )


def batch_body(value: Any, max_batch: int) -> list[Any]:
    if not isinstance(value, dict):
        raise HttpError("bad_request", "the request body must be a JSON object")
    _only(value, ("workflows",), "the request body")
    items = value.get("workflows")
    if not isinstance(items, list) or not items:
        raise HttpError("bad_request", "field 'workflows' must be a non-empty array")
    if len(items) > max_batch:  # the document's maxItems (413 stays for a body's bytes)
        raise HttpError("bad_request", f"a batch holds at most {max_batch} workflows")
    if not all(isinstance(item, dict) for item in items):
        # The batch's shape is the request's; what each object says is answered per item.
        raise HttpError("bad_request", "every item of 'workflows' must be a JSON object")
    return items


def event_body(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, dict):
        raise HttpError("bad_request", "the request body must be a JSON object")
    _only(value, ("payload", "id"), "the request body")
    dedup = _field(value, "id", str)
    if dedup is not None and not 1 <= len(dedup) <= 200:
        raise HttpError("bad_request", "field 'id' (the dedup ID) must be 1 to 200 characters")
    return value.get("payload"), dedup


def float_param(request: web.Request, name: str, default: float, maximum: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise HttpError("bad_request", f"query parameter {name} must be a number") from None
    if not 0 <= value < float("inf"):
        raise HttpError("bad_request", f"query parameter {name} must be >= 0")
    return min(value, maximum)


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError("bad_request", f"query parameter {name} must be an integer") from None
    if not lo <= value <= hi:
        raise HttpError("bad_request", f"query parameter {name} must be in [{lo}, {hi}]")
    return value


def encode_cursor(created: datetime, workflow_id: str) -> str:
    raw = json.dumps([created.isoformat(), workflow_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(value: str | None) -> tuple[datetime, str] | None:
    if not value:
        return None
    try:
        created, wid = json.loads(base64.urlsafe_b64decode(value.encode()))
        return datetime.fromisoformat(created), str(wid)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise HttpError("bad_request", "query parameter cursor is invalid") from None


def list_filters(request: web.Request) -> ListFilters:
    """?order=newest|oldest, id_prefix=, created_after=, created_before= (ISO 8601), parent=."""
    order = request.query.get("order", "oldest")
    if order not in ("newest", "oldest"):
        raise HttpError("bad_request", "order must be newest or oldest")
    prefix = request.query.get("id_prefix")
    if prefix is not None:
        _query_id(prefix, "id_prefix")
    parent = request.query.get("parent") or None
    return ListFilters(
        newest=order == "newest",
        id_prefix=prefix,
        created_after=_time_param(request, "created_after"),
        created_before=_time_param(request, "created_before"),
        parent=parent,
    )


def _time_param(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise HttpError("bad_request", f"{name} must be an ISO 8601 time") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def shards_param(request: web.Request, known: list[str]) -> list[str]:
    """?shard= keeps one shard of the cluster (an unknown one is a 404)."""
    shard = request.query.get("shard")
    if shard is None:
        return known
    if shard not in known:
        raise HttpError("not_found", f"unknown shard {shard[:40]!r}")
    return [shard]


def routing_key_param(request: web.Request) -> str | None:
    """?routing_key= (a hint that saves a search), checked like the key it names."""
    value = request.query.get("routing_key")
    if value is not None:
        _query_id(value, "routing_key")
    return value


def _query_id(value: str, name: str) -> None:
    """A query parameter holding an ID or key: malformed, it is a bad request (400)."""
    try:
        check_id(value, name)
    except HttpError as exc:
        raise HttpError("bad_request", f"query parameter {name}: {exc.message}") from None


def status_param(request: web.Request) -> str | None:
    value = request.query.get("status")
    if value is not None and value not in STATUSES:
        raise HttpError("bad_request", f"status must be one of {', '.join(STATUSES)}")
    return value
