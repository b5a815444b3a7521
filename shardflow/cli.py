"""The ``shardflow`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from shardflow.infra import pool as shard_pool
from shardflow.infra import tracing
from shardflow.infra.dbfaults import is_unavailable
from shardflow.infra.errors import ShardflowError

# Collections after 50,000 net allocations (CPython's default: 700), the older generations
# after 20 and 50 of the younger ones.
GC_THRESHOLDS = (50_000, 20, 50)


def _install_loop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # uvloop is optional on platforms without it
        pass


def run_async(main: Coroutine[Any, Any, int]) -> int:
    _install_loop()
    return asyncio.run(main)


def quiet_gc() -> None:
    """For a long-lived service, once started: what start-up made (modules, settings, pools)
    moves to a permanent generation that collections skip, and collections come rarer, so a
    full one no longer stalls the event loop for tens of ms (seen before: the router's
    19-29 ms, the executors' 32-72 ms, in an open loop after a burst)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def stop_event_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def unless_stopped(starting: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """A start-up that may wait for its servers (an executor retries its shard), given up
    when a stop signal comes first: False then."""
    start = asyncio.ensure_future(starting)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if start.done():
        start.result()
        return True
    start.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await start
    return False


async def _executor(args: argparse.Namespace) -> int:
    from shardflow.infra.logs import configure
    from shardflow.metrics.exporter import serve_metrics
    from shardflow.shard.executor import Executor
    from shardflow.shard.executor_settings import ExecutorSettings
    from shardflow.shard.faults import Faults
    from shardflow.shard.sdk import Registry

    settings = ExecutorSettings.load(vars(args))
    configure(settings.log_level, settings.log_format)
    tracing.configure("shardflow-executor")
    executor = Executor(
        settings, Registry.from_modules(settings.app, settings.app_dir), faults=Faults.from_env()
    )
    stop = stop_event_on_signals()
    runner = None
    if settings.metrics_port is not None:
        runner, port = await serve_metrics(
            executor.metrics.registry, settings.metrics_host, settings.metrics_port
        )
        print(f"metrics http://{settings.metrics_host}:{port}/metrics", flush=True)
    try:
        if not await unless_stopped(executor.start(), stop):
            return 0  # stopped while it still waited for its shard
        quiet_gc()
        try:
            if settings.catalog is not None:
                await _register_in_catalog(settings.catalog, settings.shard, executor)
            await stop.wait()
        finally:
            await executor.shutdown()
    finally:
        if runner is not None:
            await runner.cleanup()
        tracing.shutdown()  # what is buffered goes out
    return 0


async def _register_in_catalog(dsn: str, shard_id: str, executor: Any) -> None:
    """The workflows this executor runs, and the cron schedules they declare."""
    from shardflow.catalog.admin import register_workflows
    from shardflow.catalog.store import Catalog

    catalog = await Catalog.connect(dsn, pool_size=1)
    try:
        await register_workflows(catalog, shard_id, list(executor.registry.workflows.values()))
    finally:
        await catalog.close()


async def _dev(args: argparse.Namespace) -> int:
    from shardflow.demo import print_welcome, run_demo
    from shardflow.devcluster.dev import DevCluster, DevSettings
    from shardflow.infra.logs import configure
    from shardflow.shard.apps import import_apps

    settings = DevSettings.load(vars(args))
    apps = import_apps(settings.app, settings.app_dir)  # refused here, not in a restart loop
    configure("info", settings.log_format)
    stop = stop_event_on_signals()
    cluster = DevCluster(settings)
    try:
        await cluster.start()
        supervisor = asyncio.create_task(cluster.supervise(stop))
        await cluster.wait_ready()
        print_welcome(cluster)
        if args.demo:
            await run_demo(cluster.url, args.demo, apps, settings.token)
            print("serving until Ctrl-C ...", flush=True)
        await stop.wait()
        await supervisor
    finally:
        cluster.stop()
    return 0


async def _coordinator(args: argparse.Namespace) -> int:
    from shardflow.coordinator.leader import Coordinator, CoordinatorSettings
    from shardflow.infra.logs import configure
    from shardflow.metrics.exporter import serve_metrics
    from shardflow.shard.faults import Faults

    settings = CoordinatorSettings.load(vars(args))
    configure("info", settings.log_format)
    stop = stop_event_on_signals()
    coordinator = Coordinator(settings, Faults.from_env())
    runner = None
    if settings.metrics_port is not None:
        runner, port = await serve_metrics(
            coordinator.metrics.registry, settings.metrics_host, settings.metrics_port
        )
        print(f"metrics http://{settings.metrics_host}:{port}/metrics", flush=True)
    try:
        await coordinator.run(stop)
    finally:
        if runner is not None:
            await runner.cleanup()
    return 0


async def _cluster(args: argparse.Namespace) -> int:
    from shardflow.cluster_cli import run_cluster_command

    return await run_cluster_command(args)


async def _workflow(args: argparse.Namespace) -> int:
    from shardflow.workflow_cli import run_workflow_command

    return await run_workflow_command(args)


async def _migrate(args: argparse.Namespace) -> int:

    from shardflow.shard.migrate import migrate

    conn = await shard_pool.connect(args.dsn)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    print(f"applied migrations: {applied or 'none (up to date)'}")
    return 0


async def _router(args: argparse.Namespace) -> int:
    from shardflow.infra.logs import configure
    from shardflow.router.app import RouterServer
    from shardflow.router.settings import RouterSettings

    settings = RouterSettings.load(vars(args))
    configure(settings.log_level, settings.log_format)
    tracing.configure("shardflow-router")
    stop = stop_event_on_signals()
    server = RouterServer(settings)
    await server.start()
    quiet_gc()
    print(f"router {server.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()
        tracing.shutdown()
    return 0


async def _citus_init(args: argparse.Namespace) -> int:
    from shardflow.coordinator.citus import init

    layout = await init(
        args.dsn,
        args.shards,
        args.slots,
        without_citus=args.without_citus,
        rebalance=args.rebalance,
        coordinator_host=args.coordinator_host,
        workers=tuple(args.worker),
    )
    print(f"catalog: {layout.catalog_dsn}")
    for shard_id, dsn in layout.shards.items():
        print(f"shard {shard_id}: shardflow executor --shard {shard_id} --dsn '{dsn}'")
    return 0


async def _healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when this container's process answers /healthz (the image's HEALTHCHECK)."""
    import aiohttp

    url = args.url
    if url is None:
        port = os.environ.get("SHARDFLOW_METRICS_PORT") or os.environ.get("SHARDFLOW_PORT")
        url = f"http://127.0.0.1:{port or 8080}/healthz"
    try:
        timeout = aiohttp.ClientTimeout(total=args.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as resp:
            healthy = resp.status == 200
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"unhealthy: {url}: {exc!r}", file=sys.stderr)
        return 1
    print(f"{'healthy' if healthy else 'unhealthy'}: {url}")
    return 0 if healthy else 1


def build_parser() -> argparse.ArgumentParser:
    from shardflow import __version__
    from shardflow.devcluster.dev import DevSettings
    from shardflow.router.settings import RouterSettings
    from shardflow.shard.executor_settings import ExecutorSettings

    parser = argparse.ArgumentParser(prog="shardflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"shardflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("executor", help="run workflows of one shard")
    ExecutorSettings.add_arguments(p)
    p.set_defaults(handler=_executor)

    p = sub.add_parser("router", help="serve the HTTP API in front of the cluster")
    RouterSettings.add_arguments(p)
    p.set_defaults(handler=_router)

    p = sub.add_parser("dev", help="run a whole local cluster (catalog, shards, executors, router)")
    DevSettings.add_arguments(p)
    p.add_argument("--demo", type=int, default=0, help="start this many demo workflows first")
    p.set_defaults(handler=_dev)

    from shardflow.cluster_cli import add_cluster_parser, env_argument
    from shardflow.coordinator.leader import CoordinatorSettings

    p = sub.add_parser("coordinator", help="leader election, health and slot moves")
    CoordinatorSettings.add_arguments(p)
    p.set_defaults(handler=_coordinator)
    add_cluster_parser(sub, _cluster)

    from shardflow.workflow_cli import add_workflow_parser

    add_workflow_parser(sub, _workflow)

    p = sub.add_parser("migrate", help="create or upgrade the schema of a shard")
    env_argument(p, "--dsn", "SHARDFLOW_DSN", "the shard's DSN")
    p.set_defaults(handler=_migrate)

    p = sub.add_parser(
        "citus-init", help="lay the cluster out on Citus: one distributed schema per shard"
    )
    p.add_argument("--dsn", required=True, help="DSN of the Citus coordinator's database")
    p.add_argument("--shards", type=int, default=4, help="Shardflow shards (schemas)")
    p.add_argument("--slots", type=int, default=1024, help="hash slots, fixed at creation")
    p.add_argument(
        "--without-citus",
        action="store_true",
        help="the same schemas on plain Postgres (no Citus placement)",
    )
    p.add_argument(
        "--rebalance", action="store_true", help="then spread the schemas (citus_rebalance_start)"
    )
    p.add_argument(
        "--coordinator-host", default=None, help="HOST:PORT the workers reach the coordinator at"
    )
    p.add_argument(
        "--worker", action="append", default=[], help="HOST:PORT of a worker to add (repeatable)"
    )
    p.set_defaults(handler=_citus_init)

    p = sub.add_parser("healthcheck", help="probe /healthz of this process (container checks)")
    p.add_argument(
        "--url",
        default=None,
        help="default: port $SHARDFLOW_METRICS_PORT, else $SHARDFLOW_PORT, else 8080",
    )
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(handler=_healthcheck)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_command(args.handler, args)


def run_command(
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: Any
) -> None:
    """Run a command's handler and exit with its code; a ShardflowError or an unreachable
    server is one line on stderr and exit code 2, never a traceback."""
    try:
        code = run_async(handler(args))
    except ShardflowError as exc:
        print(f"shardflow: error [{exc.code}]: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        unreached = _unreached(exc)
        if unreached is None:
            raise
        kind, what = unreached
        print(f"shardflow: error [{kind}]: {what}", file=sys.stderr)
        code = 2
    sys.exit(code)


def _unreached(exc: BaseException) -> tuple[str, str] | None:
    """The stable code and the message of a failure to reach a server, to listen or to use
    a file or folder (an OSError naming it), else None (a bug, which keeps its traceback)."""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return "address_in_use", f"cannot listen: {exc!r}"
    if isinstance(exc, OSError) and exc.filename is not None:
        # a file or folder given or made here, not a connection
        return "file_error", f"cannot use {exc.filename}: {exc.strerror}"
    if is_unavailable(exc):
        return "unavailable", f"cannot reach a server: {exc!r}"
    return None
