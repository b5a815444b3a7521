"""Classification of database failures by SQLSTATE class and exception type, not message."""

from __future__ import annotations

import asyncpg

# 08: connection exception; 57: operator intervention (shutdown, cannot connect now);
# 53: insufficient resources (too many connections).
_UNAVAILABLE_CLASSES = ("08", "57", "53")


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the shard could not be reached, not that a statement was wrong."""
    if isinstance(exc, OSError | asyncpg.InterfaceError | TimeoutError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return (getattr(exc, "sqlstate", "") or "")[:2] in _UNAVAILABLE_CLASSES
    return False
