"""Structured logs, one event per line: logfmt (the default) or JSON (``--log-format``).

Log calls are written as ``log.info("event=x owner=%s", owner)``; the formatter pairs each
``key=%s`` of the message with its argument, so every field keeps its own value (a value
with spaces or quotes is quoted, as logfmt requires), and adds the context of the task
that logs: ``shard`` (an executor's), ``workflow_id`` while a workflow's code runs and
``step`` while one of its steps runs (an application's own log lines included).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

FORMATS = ("logfmt", "json")
_CONTEXT: ContextVar[dict[str, str]] = ContextVar("shardflow_log_context", default={})  # noqa: B039
_CONVERSION = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdrfixeEgG]")
_BARE = re.compile(r"^[^\s\"=\\]+$")


def bind(**fields: str | None) -> Token[dict[str, str]]:
    """Add fields to every line logged from this task (and the tasks it starts) on."""
    merged = {**_CONTEXT.get(), **{k: v for k, v in fields.items() if v}}
    return _CONTEXT.set(merged)


@contextmanager
def context(**fields: str | None) -> Iterator[None]:
    """``bind`` for the lines logged inside a ``with`` block."""
    token = bind(**fields)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _message_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The message's ``key=value`` pairs with their arguments put in; free words go to
    ``msg``. A message that does not split that way is kept whole as ``msg``."""
    if not isinstance(record.msg, str):
        return {"msg": record.getMessage()}
    args = (
        record.args if isinstance(record.args, tuple) else ((record.args,) if record.args else ())
    )
    fields: dict[str, Any] = {}
    words: list[str] = []
    used = 0
    for token in record.msg.split():
        key, eq, spec = token.partition("=")
        conversions = len(_CONVERSION.findall(spec.replace("%%", "")))
        if not eq or not key.isidentifier() or conversions > 1:
            if _CONVERSION.search(token.replace("%%", "")):
                return {"msg": record.getMessage()}
            words.append(token)
            continue
        if conversions == 1:
            if used >= len(args):
                return {"msg": record.getMessage()}
            try:
                fields[key] = spec % (args[used],)
            except (TypeError, ValueError):
                return {"msg": record.getMessage()}
            used += 1
        else:
            fields[key] = spec.replace("%%", "%")
    if used != len(args):
        return {"msg": record.getMessage()}
    if words:
        fields["msg"] = " ".join(words)
    return fields


def record_fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, Any]:
    """Every field of a log line, in order: time, level, logger, the message's, context."""
    fields: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
    }
    fields.update(_message_fields(record))
    for key, value in _CONTEXT.get().items():
        fields.setdefault(key, value)
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    return fields


def logfmt_value(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if _BARE.match(text) else json.dumps(text, ensure_ascii=False)


class EventFormatter(logging.Formatter):
    def __init__(self, style: str = "logfmt") -> None:
        super().__init__()
        if style not in FORMATS:
            raise ValueError(f"log format {style!r}: expected one of {', '.join(FORMATS)}")
        self.style = style

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record, self)
        if self.style == "json":
            return json.dumps(fields, ensure_ascii=False, default=str)
        return " ".join(f"{key}={logfmt_value(value)}" for key, value in fields.items())


def configure(level: str = "info", style: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter(style))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
