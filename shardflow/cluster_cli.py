"""`shardflow cluster ...`: membership, rebalancing, status and schema upgrades."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from shardflow.catalog import admin as operations
from shardflow.catalog.store import Catalog, CatalogError

console = Console()


def env_argument(parser: Any, flag: str, env: str, what: str) -> None:
    """A DSN flag that defaults to an environment variable, which keeps passwords off
    command lines (and out of `ps`); required when the variable is not set."""
    parser.add_argument(
        flag,
        default=os.environ.get(env),
        required=env not in os.environ,
        help=f"{what} (default: ${env})",
    )


def add_cluster_parser(sub: Any, handler: Callable[..., Any]) -> None:
    p = sub.add_parser("cluster", help="membership, rebalancing, status, schema upgrades")
    env_argument(p, "--catalog", "SHARDFLOW_CATALOG", "DSN of the cluster catalog")
    which = p.add_subparsers(dest="action", required=True)
    i = which.add_parser(
        "init", help="create the catalog and its first shards, slots spread (idempotent)"
    )
    i.add_argument("--slots", type=int, default=1024, help="hash slots, fixed at creation")
    i.add_argument(
        "--shard", action="append", required=True, metavar="ID=DSN", help="a shard (repeatable)"
    )
    a = which.add_parser("add-shard", help="add a shard (schema applied, no slots yet)")
    a.add_argument("--id", required=True)
    a.add_argument("--dsn", required=True)
    d = which.add_parser("drain-shard", help="move all slots of a shard away")
    d.add_argument("id")
    d.add_argument("--wait", action="store_true")
    r = which.add_parser("remove-shard", help="remove a shard that owns no slots")
    r.add_argument("id")
    b = which.add_parser("rebalance", help="plan an even spread; the coordinator moves slots")
    b.add_argument("--wait", action="store_true", help="follow the moves until done")
    which.add_parser("status", help="shards, slots, leader, moves in progress")
    which.add_parser("watch", help="follow the moves in progress (from any terminal)")
    which.add_parser("migrate", help="upgrade the catalog, then every shard, one at a time")
    f = which.add_parser(
        "define-workflow", help="define a workflow in SQL on every shard (JSON definition)"
    )
    f.add_argument("name")
    f.add_argument("file", help='the definition, {"steps": [...]} (see docs/sql-workflows.md)')
    p.set_defaults(handler=handler)


async def run_cluster_command(args: argparse.Namespace) -> int:
    catalog = await Catalog.connect(args.catalog, pool_size=2)
    try:
        if args.action == "init":
            added = await operations.init(catalog, args.slots, _shard_pairs(args.shard))
            console.print(f"cluster ready; shards added: {', '.join(added) or 'none'}")
        elif args.action == "add-shard":
            await catalog.add_shard(args.id, args.dsn)
            console.print(f"added shard {args.id} (no slots yet: run `cluster rebalance`)")
        elif args.action == "drain-shard":
            after = await _last_move(catalog)
            moves = await operations.drain(catalog, args.id)
            console.print(f"draining {args.id}: {moves} slot moves queued")
            if args.wait:
                return await follow(catalog, moves, after)
        elif args.action == "remove-shard":
            await operations.remove(catalog, args.id)
            console.print(f"removed shard {args.id}")
        elif args.action == "rebalance":
            after = await _last_move(catalog)
            moves = await operations.rebalance(catalog)
            console.print(f"{moves} slot moves queued")
            if args.wait and moves:
                return await follow(catalog, moves, after)
        elif args.action == "watch":
            live = len((await operations.status(catalog))["moves"])
            return await follow(catalog, live, await _last_move(catalog) - live)
        elif args.action == "migrate":
            await upgrade(catalog)
        elif args.action == "define-workflow":
            try:
                definition = await asyncio.to_thread(Path(args.file).read_text)
            except OSError as exc:
                raise CatalogError(f"cannot read {args.file}: {exc.strerror}") from None
            version = await operations.define_workflow(catalog, args.name, definition)
            console.print(f"workflow {args.name} defined on every shard (version {version})")
        else:
            console.print_json(json.dumps(await operations.status(catalog)))
    finally:
        await catalog.close()
    return 0


def _shard_pairs(values: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        shard_id, sep, dsn = value.partition("=")
        if not sep or not shard_id.strip() or not dsn.strip():
            raise CatalogError(f"--shard takes ID=DSN, not {value!r}")
        pairs[shard_id.strip()] = dsn.strip()
    return pairs


async def _last_move(catalog: Catalog) -> int:
    recent = await catalog.moves_recent(1)
    return int(recent[0]["id"]) if recent else 0


# How `cluster ... --wait` ends: all moved; some rolled back; no coordinator leads.
ROLLED_BACK, NO_LEADER = 1, 3


async def follow(catalog: Catalog, total: int, after: int) -> int:
    """A progress bar over the moves in progress (slots moved / total, ETA), then what
    became of the moves queued after move ``after``: the exit code (0 when all moved)."""
    with Progress(
        TextColumn("slots moved"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
    ) as progress:
        task = progress.add_task("moves", total=total, note="")
        while True:
            status = await operations.status(catalog)
            live = status["moves"]
            note = f"moving slot {live[0]['slot']} ({live[0]['phase']})" if live else ""
            if live and live[0]["error"]:
                note += f" — {live[0]['error']}"
            progress.update(task, completed=total - len(live), note=note)
            if not live:
                break
            if status["leader"] is None:
                progress.stop()
                console.print(
                    f"no coordinator leads: {len(live)} moves wait for one "
                    "(start `shardflow coordinator`, then `shardflow cluster watch`)"
                )
                return NO_LEADER
            await asyncio.sleep(0.3)
    ours = [m for m in await catalog.moves_recent(max(total, 1) * 2 + 10) if m["id"] > after]
    rolled = sorted(m["slot"] for m in ours if m["phase"] == "rolled_back")
    if rolled:
        console.print(
            f"{len(rolled)} moves rolled back (their target was unreachable), slots "
            f"{', '.join(map(str, rolled))}: run `cluster rebalance` again"
        )
        return ROLLED_BACK
    console.print("every slot moved")
    return 0


async def upgrade(catalog: Catalog) -> None:
    """Catalog first, then each shard in turn; the cluster keeps serving."""
    for target, applied in (await catalog.upgrade()).items():
        console.print(f"{target}: {applied or 'up to date'}")
