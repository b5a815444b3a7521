"""`shardflow workflow list|show|result|start|cancel|retry|signal`: the HTTP API from a
terminal, as an operator uses it at 3 a.m. Readable tables by default, ``--json`` for
scripts; ``--url`` and ``--token`` (or ``SHARDFLOW_URL``, ``SHARDFLOW_TOKEN``) say where.

Exit codes: 0 done; 1 the workflow ended failed or cancelled (``result``); 2 a bad
argument (JSON that does not parse, say); 3 no such workflow; 4 the router is not
reachable; 5 the token was refused; 6 a conflict (the ID exists with another input, or
the workflow already finished); 7 any other error the router answered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from shardflow.infra.errors import (
    ShardflowError,
    ShardUnavailableError,
    WorkflowConflictError,
    WorkflowFailedError,
    WorkflowFinishedError,
    WorkflowNotFoundError,
)
from shardflow.router.client import Client
from shardflow.router.errors import ForbiddenError, UnauthorizedError

console = Console(highlight=False, soft_wrap=True)

EXIT: dict[type[BaseException], int] = {
    WorkflowFailedError: 1,
    WorkflowNotFoundError: 3,
    ShardUnavailableError: 4,
    UnauthorizedError: 5,
    ForbiddenError: 5,
    WorkflowConflictError: 6,
    WorkflowFinishedError: 6,
}


class UsageError(ShardflowError):
    code = "bad_argument"


def add_workflow_parser(sub: Any, handler: Callable[..., Any]) -> None:
    p = sub.add_parser("workflow", help="list, show, start, cancel, retry and signal workflows")
    p.add_argument(
        "--url",
        default=os.environ.get("SHARDFLOW_URL", "http://127.0.0.1:8080"),
        help="a router (default: $SHARDFLOW_URL, else http://127.0.0.1:8080)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("SHARDFLOW_TOKEN"),
        help="bearer token (default: $SHARDFLOW_TOKEN)",
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    which = p.add_subparsers(dest="action", required=True)
    ls = which.add_parser("list", help="workflows, newest first")
    ls.add_argument("--status")
    ls.add_argument("--workflow", help="a workflow name")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--cursor")
    show = which.add_parser("show", help="a workflow's status and step timeline")
    show.add_argument("id")
    res = which.add_parser("result", help="wait for a workflow's outcome")
    res.add_argument("id")
    res.add_argument("--timeout", type=float, default=30.0)
    st = which.add_parser("start", help="start a workflow")
    st.add_argument("name")
    st.add_argument("--input", default="null", help="JSON input")
    st.add_argument("--id")
    st.add_argument("--routing-key")
    st.add_argument("--wait", type=float, default=0.0, help="seconds to wait for its outcome")
    for name, text in (("cancel", "cancel a workflow"), ("retry", "retry a failed workflow")):
        which.add_parser(name, help=text).add_argument("id")
    sig = which.add_parser("signal", help="send an event to a workflow")
    sig.add_argument("id")
    sig.add_argument("event")
    sig.add_argument("--payload", default="null", help="JSON payload")
    sig.add_argument("--dedup-id", help="delivered once per ID (default: one is generated)")
    p.set_defaults(handler=handler)


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not JSON: {exc}") from None


async def run_workflow_command(args: argparse.Namespace) -> int:
    """Run one command; the exit code (errors are printed as one line by the caller)."""
    async with Client(args.url, args.token, retries=2, backoff=0.2) as client:
        try:
            return await _run(client, args)
        except ShardflowError as exc:
            print(f"shardflow: error [{exc.code}]: {exc}", file=sys.stderr)
            if isinstance(exc, UsageError):
                return 2
            return next((code for cls, code in EXIT.items() if isinstance(exc, cls)), 7)


async def _run(client: Client, args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        page = await client.list(
            status=args.status, workflow=args.workflow, limit=args.limit, cursor=args.cursor
        )
        return _emit(args, page, _list_table)
    if action == "show":
        return _emit(args, await client.status(args.id), _show)
    if action == "result":
        doc = await client.wait(args.id, args.timeout)
        _emit(args, doc, _outcome)
        return 0 if doc["status"] == "completed" else 1
    if action == "start":
        payload = _json_arg(args.input, "--input")
        doc = await client.start(
            args.name, payload, id=args.id, routing_key=args.routing_key, wait=args.wait
        )
        return _emit(args, doc, lambda d: console.print(f"{d['id']}  {d['status']}"))
    if action in ("cancel", "retry"):
        status = await (client.cancel if action == "cancel" else client.retry)(args.id)
        return _emit(args, {"id": args.id, "status": status}, lambda d: console.print(status))
    payload = _json_arg(args.payload, "--payload")
    delivered = await client.send_event(args.id, args.event, payload, dedup_id=args.dedup_id)
    doc = {"id": args.id, "event": args.event, "delivered": delivered}
    return _emit(args, doc, lambda d: console.print("delivered" if delivered else "duplicate"))


def _emit(args: argparse.Namespace, doc: Any, table: Callable[[Any], None]) -> int:
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        table(doc)
    return 0


def _list_table(page: dict[str, Any]) -> None:
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "WORKFLOW", "STATUS", "SHARD", "CREATED"):
        table.add_column(column)
    for w in page["workflows"]:
        table.add_row(w["id"], w["workflow"], w["status"], w.get("shard", ""), w["created_at"])
    console.print(table)
    if page.get("next_cursor"):
        console.print(f"more: --cursor {page['next_cursor']}")


def _show(doc: dict[str, Any]) -> None:
    console.print(f"{doc['id']}  {doc['workflow']} v{doc['version']}  {doc['status']}")
    console.print(f"shard {doc['shard']}  slot {doc['slot']}  attempt {doc['attempt']}")
    console.print(f"created {doc['created_at']}  updated {doc['updated_at']}")
    console.print(f"input  {json.dumps(doc['input'])}")
    if doc.get("output") is not None:
        console.print(f"output {json.dumps(doc['output'])}")
    if doc.get("error"):
        console.print(f"error  {doc['error'].get('type')}: {doc['error'].get('message')}")
    table = Table(box=None, pad_edge=False, title="steps")
    for column in ("SEQ", "STEP", "STATUS", "ATTEMPTS", "DURATION", "ERROR"):
        table.add_column(column)
    for s in doc["steps"]:
        error = s.get("error") or {}
        table.add_row(
            str(s["seq"]),
            s["name"],
            s["status"],
            str(s["attempts"]),
            _duration(s.get("started_at"), s.get("finished_at")),
            f"{error.get('type')}: {error.get('message')}" if error else "",
        )
    console.print(table)
    if doc.get("compensations"):
        console.print(f"compensations: {', '.join(doc['compensations'])}")


def _outcome(doc: dict[str, Any]) -> None:
    if doc["status"] == "completed":
        console.print(json.dumps(doc.get("output")))
    else:
        error = doc.get("error") or {}
        console.print(f"{doc['status']}: {error.get('type')}: {error.get('message')}")


def _duration(started: str | None, finished: str | None) -> str:
    if not started or not finished:
        return ""
    seconds = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
