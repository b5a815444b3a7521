"""Workflow versions: an instance keeps the version it started with and only executors
with that version's code run it; ``ctx.patched`` branches an in-place change."""

from __future__ import annotations

import asyncio
from typing import Any

from shardflow import Context, step, workflow
from shardflow.shard.client import ShardClient
from shardflow.shard.sdk import Registry
from tests.waiting import status_becomes, until


@step
async def first(x: Any) -> str:
    return "first"


@step
async def old_step(x: Any) -> str:
    return "old"


@step
async def new_step(x: Any) -> str:
    return "new"


def order(version: str) -> Registry:
    @workflow(name="order", version=version)
    async def run(ctx: Context, inp: Any) -> dict[str, Any]:
        await first(inp)
        await ctx.wait_for_event("go")
        return {"ran": version}

    return Registry.of(run)


async def test_an_instance_runs_only_on_executors_with_its_version(
    client: ShardClient, start_executor: Any
) -> None:
    v1 = await start_executor(order("1"))
    old = await client.start("order", {})
    await status_becomes(client, old, "waiting")
    await v1.shutdown()

    await start_executor(order("2"))  # the new release: new starts take version 2
    new = await client.start("order", {})
    await status_becomes(client, new, "waiting")
    assert (await client.status(old))["version"] == "1"
    assert (await client.status(new))["version"] == "2"
    for wid in (old, new):
        assert await client.send_event(wid, "go", None)
    assert await client.result(new, timeout=30) == {"ran": "2"}
    await asyncio.sleep(0.5)  # v2's executor polled many times meanwhile
    assert (await client.status(old))["status"] in ("waiting", "pending")  # left alone

    await start_executor(order("1"))  # an executor with version 1's code comes back
    assert await client.result(old, timeout=30) == {"ran": "1"}


def patch_app(patched: bool) -> Registry:
    """Version 1 of ``billing``, before (False) and after (True) an in-place change."""

    @workflow(name="billing", version="1")
    async def run(ctx: Context, inp: Any) -> dict[str, Any]:
        await first(inp)
        await ctx.wait_for_event("one")
        if patched and await ctx.patched("new-billing"):
            path = await new_step(inp)
        else:
            path = await old_step(inp)
        await ctx.wait_for_event("two")
        return {"path": path}

    return Registry.of(run)


async def test_patched_keeps_old_runs_on_the_old_path(
    client: ShardClient, start_executor: Any
) -> None:
    before = await start_executor(patch_app(False))
    replayed = await client.start("billing", {})  # gets past the change under the old code
    assert await client.send_event(replayed, "one", None)

    async def took_old_path() -> bool:
        sql = (
            "SELECT count(*) FROM shardflow.steps WHERE workflow_id = $1 AND name LIKE '%old_step'"
        )
        return bool(await client.pool.fetchval(sql, replayed))

    await until(took_old_path, timeout=30, what="the old path under the old code")
    waiting = await client.start("billing", {})  # reaches the change only after it
    await status_becomes(client, waiting, "waiting")
    await before.shutdown()

    await start_executor(patch_app(True))
    fresh = await client.start("billing", {})
    assert await client.send_event(waiting, "one", None)
    assert await client.send_event(fresh, "one", None)
    for wid in (replayed, waiting, fresh):
        await status_becomes(client, wid, "waiting")
        assert await client.send_event(wid, "two", None)
    assert await client.result(replayed, timeout=30) == {"path": "old"}
    assert await client.result(waiting, timeout=30) == {"path": "new"}
    assert await client.result(fresh, timeout=30) == {"path": "new"}
    steps = await client.pool.fetch(
        "SELECT name FROM shardflow.steps WHERE workflow_id = $1 ORDER BY seq", fresh
    )
    assert "ctx.patched:new-billing" in [r["name"] for r in steps]


async def test_an_old_executor_gives_back_a_new_version_it_claimed_before_knowing(
    client: ShardClient, start_executor: Any
) -> None:
    old = await start_executor(order("1"))
    # A new release registers version 2 (its executor not up yet): new starts take it.
    await client.pool.execute(
        "INSERT INTO shardflow.registry (name, version) VALUES ('order', '2')"
    )
    new = await client.start("order", {})
    assert (await client.status(new))["version"] == "2"

    async def given_back() -> bool:
        return bool(old.runner.foreign_seen)

    await until(given_back, timeout=30, what="the old executor to meet version 2")
    await status_becomes(client, new, "pending")  # released untouched, not failed
    await asyncio.sleep(0.3)
    assert (await client.status(new))["status"] == "pending"  # and never claimed again
    assert not await client.pool.fetchval("SELECT count(*) FROM shardflow.steps")
    await start_executor(order("2"))
    assert await client.send_event(new, "go", None)
    assert await client.result(new, timeout=30) == {"ran": "2"}
