"""JSON encoding of inputs, outputs and errors: strict, so a bad value fails at the call site."""

from __future__ import annotations

import json
from typing import Any

from shardflow.infra.errors import SerializationError

_encoder = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any, what: str) -> str:
    """Encode ``value`` as JSON text or raise SerializationError naming ``what``."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(
            f"{what} is not JSON-serialisable ({exc}); pass dicts, lists, strings, "
            "finite numbers, booleans and None only",
            what=what,
        ) from None


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
