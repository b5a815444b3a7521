"""Connection pools for shards and the catalog."""

from __future__ import annotations

from typing import Any

import asyncpg


async def _keep(_: Any) -> None:
    """No reset on release: pooled connections never keep session state (no LISTEN,
    no session advisory lock, no SET), so asyncpg's default reset (four statements per
    release: unlock, CLOSE ALL, UNLISTEN, RESET ALL) is pure overhead on the hot path."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    timeout: float = 60.0,
    command_timeout: float | None = None,
) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        command_timeout=command_timeout,
        reset=_keep,
    )
    return pool
