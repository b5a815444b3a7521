"""Coordinators a test runs in its own event loop; conftest stops them after each test."""

from __future__ import annotations

import asyncio

RUNNING: list[tuple[asyncio.Event, asyncio.Task[None]]] = []


async def stop_all() -> None:
    while RUNNING:
        stop, task = RUNNING.pop()
        stop.set()
        await task
