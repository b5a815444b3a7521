"""`shardflow dev`: a whole local cluster (catalog, N shards, executors, router), supervised.

Data lives under ``--data``; a second start on the same folder resumes the same
cluster (recognised by the ``cluster.json`` marker it writes). A crashed child is
restarted and logged; SIGINT/SIGTERM (also sent to the whole process group) stops
everything cleanly, with no child restarted during shutdown and no server left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shardflow.catalog.store import Catalog
from shardflow.devcluster import haproxy
from shardflow.devcluster.launcher import (
    LauncherError,
    LocalPostgres,
    die_with_parent,
    ensure_database,
    free_port,
)
from shardflow.infra.logs import FORMATS
from shardflow.infra.settings import Settings, setting
from shardflow.shard.apps import child_env

log = logging.getLogger("shardflow.dev")
MARKER = "cluster.json"
DATABASE = "shardflow"


# A Citus node: the extension preloaded, logical decoding for the rebalancer's online
# moves, and no SSL between nodes on loopback (Citus asks for it by default).
CITUS_SETTINGS = {
    "shared_preload_libraries": "citus,pg_stat_statements",
    "wal_level": "logical",
    "citus.node_conninfo": "sslmode=disable",
    "max_worker_processes": "24",
}


@dataclass(frozen=True)
class DevSettings(Settings):
    app: list[str] = setting([], help="app module(s) the executors load (repeatable)")
    app_dir: str | None = setting(
        None, help="folder the app modules are imported from (default: the working directory)"
    )
    shards: int = setting(3, help="number of shard Postgres servers", minimum=1)
    slots: int = setting(1024, help="hash slots, fixed when the cluster is created", minimum=1)
    fast_path: bool = setting(
        True,
        help="the routers run an executor of every shard in their own process: the starts "
        "they accept run there, answered in memory (router --executors)",
    )
    executors_per_shard: int = setting(
        0,
        help="executor processes per shard, beside the routers' own (at least 1 without "
        "the fast path)",
        minimum=0,
    )
    routers: int = setting(1, help="router processes (the first on --port)", minimum=1)
    home_shards: bool = setting(
        False,
        help="with the fast path and as many routers as shards: router i runs the executor "
        "of shard i only (router --executors-for), the other shards' starts go to theirs",
    )
    coordinators: int = setting(1, help="coordinator processes (one leads)", minimum=0)
    host: str = setting("127.0.0.1", help="address the router listens on")
    port: int = setting(8080, help="port of the first router", minimum=0)
    data: str = setting(".shardflow", help="folder holding the cluster (kept between runs)")
    durable: bool = setting(True, help="fsync on (off only for throw-away test clusters)")
    token: str | None = setting(None, help="bearer token the routers require (unset: none)")
    prometheus: bool = setting(False, help="also run a local Prometheus (Debian package)")
    prometheus_port: int = setting(9090, help="port of the local Prometheus", minimum=0)
    scrape_interval: str = setting("5s", help="scrape and rule interval of that Prometheus")
    haproxy: bool = setting(
        False, help="put the routers behind a local haproxy on --port (Debian package)"
    )
    citus: bool = setting(
        False, help="the shards as distributed schemas of a local Citus cluster (docs/citus.md)"
    )
    workers: int = setting(2, help="Citus workers (with --citus)", minimum=1)
    log_format: str = setting(
        "logfmt", help="log lines of every process as logfmt or JSON", choices=FORMATS
    )

    def validate(self) -> None:
        super().validate()
        from shardflow.infra.errors import SettingsError

        if self.home_shards and (not self.fast_path or self.routers != self.shards):
            raise SettingsError(
                "home_shards needs the fast path and --routers equal to --shards",
                setting="home_shards",
            )
        if not self.fast_path and self.executors_per_shard < 1:
            raise SettingsError(
                "without the fast path the workflows need executor processes: "
                "--executors-per-shard 1 or more",
                setting="executors_per_shard",
            )


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    crashes: int = 0  # in a row, each within STABLE_SECONDS of its start
    retry_at: float | None = None
    env: dict[str, str] = field(default_factory=dict)  # beside the app's PYTHONPATH


# A child that ran this long before exiting is restarted at once; one that keeps
# exiting sooner waits 0.5 s, 1 s, 2 s ... (at most 30 s) between restarts.
STABLE_SECONDS = 30.0


def executor_child(shard: str, i: int) -> str:
    """The name of the i-th executor process of a shard (and of its log)."""
    return f"executor-{shard}-{i}"


def is_executor_of(child: str, shard: str) -> bool:
    return child.startswith(f"executor-{shard}-")


def router_child(i: int) -> str:
    """The name of the i-th router process (and of its log in the cluster folder)."""
    return f"router-{i}"


def restart_delay(crashes: int) -> float:
    return 0.0 if crashes == 0 else min(30.0, 0.5 * 2 ** (crashes - 1))


def _restart_due(child: Child, now: float, event: str, code: int | None) -> bool:
    """Whether an exited child (or server) is to start again now: the first look at an
    exit counts it (a crash soon after its start makes the next wait longer) and logs
    ``event=<event>=<name>``; later looks wait out that delay."""
    if child.retry_at is None:
        stable = now - child.started_at >= STABLE_SECONDS
        child.crashes = 0 if stable else child.crashes + 1
        child.retry_at = now + restart_delay(child.crashes)
        delay = child.retry_at - now
        log.warning("event=%s code=%s restart_in=%.1fs", f"{event}={child.name}", code, delay)
    return now >= child.retry_at


@dataclass
class DevCluster:
    settings: DevSettings
    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    def __post_init__(self) -> None:
        self.data = Path(os.path.abspath(self.settings.data))
        self.pg = LocalPostgres(
            self.data,
            durable=self.settings.durable,
            databases=(DATABASE,),
            extra_settings=CITUS_SETTINGS if self.settings.citus else {},
        )
        self.catalog_dsn = ""
        self.shard_dsns: dict[str, str] = {}
        self.router_urls: list[str] = []
        self.prometheus_url = ""
        self.admin_token = ""
        self._server_watch: dict[str, Child] = {}

    @property
    def admin_token_file(self) -> Path:
        return self.data / "admin-token"

    def _load_admin_token(self) -> str:
        """The local cluster's admin token: made once, kept (mode 0600) under --data, so
        the cluster stays fully usable across restarts and the token is never on a
        command line."""
        path = self.admin_token_file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    async def start(self) -> None:
        self.admin_token = self._load_admin_token()
        if self.settings.citus:
            await self._start_citus()
        else:
            names = ["catalog"] + [f"shard{i}" for i in range(self.settings.shards)]
            servers = {s.name: s for s in self.pg.start(*names)}
            self.catalog_dsn = servers["catalog"].dsn(DATABASE)
            self.shard_dsns = {n: servers[n].dsn(DATABASE) for n in names[1:]}
            for server in servers.values():
                await ensure_database(server, DATABASE)
            await self._ensure_cluster()
        self._plan_children()
        for child in self.children:
            self._spawn(child)

    async def _start_citus(self) -> None:
        """A Citus coordinator and ``workers`` workers; ``citus-init`` (idempotent) lays
        the shards out as distributed schemas and the catalog on the coordinator."""
        from shardflow.coordinator import citus

        s = self.settings
        names = ["citus-coordinator"] + [f"citus-worker{i}" for i in range(1, s.workers + 1)]
        servers = self.pg.start(*names)
        layout = await citus.init(
            servers[0].dsn(DATABASE),
            s.shards,
            s.slots,
            coordinator_host=f"127.0.0.1:{servers[0].port}",
            workers=tuple(f"127.0.0.1:{server.port}" for server in servers[1:]),
        )
        self.catalog_dsn = layout.catalog_dsn
        self.shard_dsns = layout.shards
        (self.data / MARKER).write_text(
            json.dumps({"slots": s.slots, "shards": sorted(self.shard_dsns), "citus": True})
        )

    async def _ensure_cluster(self) -> None:
        marker = self.data / MARKER
        catalog = await Catalog.connect(self.catalog_dsn)
        try:
            if marker.exists():
                known = json.loads(marker.read_text())
                for shard_id, dsn in self.shard_dsns.items():
                    if shard_id in known["shards"]:
                        await catalog.set_dsn(shard_id, dsn)
                # A folder made by an older version: its schemas catch up before any
                # executor starts (an executor refuses a schema older than it needs).
                applied = {k: v for k, v in (await catalog.upgrade()).items() if v}
                log.info("event=cluster_resumed data=%s migrated=%s", self.data, applied or "none")
                return
            await catalog.create(self.settings.slots)
            for shard_id, dsn in self.shard_dsns.items():
                await catalog.add_shard(shard_id, dsn)
            await catalog.spread()
            marker.write_text(
                json.dumps({"slots": self.settings.slots, "shards": sorted(self.shard_dsns)})
            )
            log.info(
                "event=cluster_created shards=%d slots=%d",
                len(self.shard_dsns),
                self.settings.slots,
            )
        finally:
            await catalog.close()

    def _plan_children(self) -> None:
        s = self.settings
        base = [sys.executable, "-m", "shardflow"]
        apps = [arg for app in s.app for arg in ("--app", app)]
        targets: dict[str, list[str]] = {"executor": [], "router": [], "coordinator": []}
        for shard_id, dsn in self.shard_dsns.items():
            for i in range(s.executors_per_shard):
                port = free_port()
                targets["executor"].append(f"127.0.0.1:{port}")
                self.children.append(
                    Child(
                        executor_child(shard_id, i),
                        [
                            *base,
                            "executor",
                            "--dsn",
                            dsn,
                            "--shard",
                            shard_id,
                            "--catalog",
                            self.catalog_dsn,
                            "--metrics-port",
                            str(port),
                            *apps,
                        ],
                    )
                )
        for i in range(s.coordinators):
            port = free_port()
            targets["coordinator"].append(f"127.0.0.1:{port}")
            self.children.append(
                Child(
                    f"coordinator-{i}",
                    [
                        *base,
                        "coordinator",
                        "--catalog",
                        self.catalog_dsn,
                        "--name",
                        f"coordinator-{i}",
                        "--metrics-port",
                        str(port),
                    ],
                )
            )
        for i in range(s.routers):
            port = s.port if i == 0 and not s.haproxy else free_port()
            self.router_urls.append(f"http://{s.host}:{port}")
            targets["router"].append(f"{s.host}:{port}")
            tokens = ["--tokens", s.token] if s.token else []
            local = ["--executors", *apps] if s.fast_path else []
            if s.home_shards:
                local += ["--executors-for", list(self.shard_dsns)[i]]
            if s.fast_path and s.app_dir:
                local += ["--app-dir", s.app_dir]
            self.children.append(
                Child(
                    router_child(i),
                    env={"SHARDFLOW_ADMIN_TOKENS": self.admin_token},
                    args=[
                        *base,
                        "router",
                        "--catalog",
                        self.catalog_dsn,
                        "--host",
                        s.host,
                        "--port",
                        str(port),
                        *tokens,
                        *local,
                    ],
                )
            )
        self.write_targets(targets)
        if s.haproxy:
            self.children.append(self._haproxy(targets["router"]))

    def runs_for(self, child: str, shard: str) -> bool:
        """Whether process ``child`` runs workflows of ``shard`` only: one of its executors,
        or with home_shards its router."""
        if is_executor_of(child, shard):
            return True
        homes = list(self.shard_dsns) if self.settings.home_shards else []
        return shard in homes and child == router_child(homes.index(shard))

    @property
    def url(self) -> str:
        """Where clients go: haproxy when it runs, else the first router."""
        if self.settings.haproxy:
            return f"http://{self.settings.host}:{self.settings.port}"
        return self.router_urls[0]

    def _haproxy(self, routers: list[str]) -> Child:
        """deploy/haproxy's configuration, bound to --port, over the local routers."""
        binary = shutil.which("haproxy")
        if binary is None or not haproxy.TEMPLATE.is_file():
            raise LauncherError(
                "--haproxy needs Debian's haproxy and the repository's deploy/haproxy "
                "(run from a checkout after `make install`)"
            )
        folder = self.data / "haproxy"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "haproxy.cfg"
        s = self.settings
        config.write_text(
            haproxy.render(
                haproxy.TEMPLATE.read_text(),
                bind=f"{s.host}:{s.port}",
                stats_bind=f"127.0.0.1:{free_port()}",
                servers=routers,
            )
        )
        return Child("haproxy", [binary, "-db", "-f", str(config)])

    def write_targets(self, targets: dict[str, list[str]]) -> None:
        """A Prometheus file_sd file for every process (deploy/prometheus reads it)."""
        folder = self.data / "prometheus" / "targets"
        folder.mkdir(parents=True, exist_ok=True)
        groups = [
            {"targets": t, "labels": {"job": f"shardflow-{kind}"}}
            for kind, t in targets.items()
            if t
        ]
        self.targets_file = folder / "targets.json"
        self.targets_file.write_text(json.dumps(groups, indent=1))
        if self.settings.prometheus:
            self.children.append(self._prometheus())

    def _prometheus(self) -> Child:
        """deploy/prometheus's config and rules, reading the targets written above."""
        deploy = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
        binary = shutil.which("prometheus")
        if binary is None or not deploy.is_dir():
            raise LauncherError(
                "--prometheus needs Debian's prometheus and the repository's "
                "deploy/prometheus (run from a checkout after `make install`)"
            )
        folder = self.data / "prometheus"
        interval = self.settings.scrape_interval
        config = (deploy / "prometheus.yml").read_text()
        for key in ("scrape_interval", "evaluation_interval", "refresh_interval"):
            config = config.replace(f"{key}: 5s", f"{key}: {interval}")
        (folder / "prometheus.yml").write_text(config)
        rules = folder / "rules"
        if rules.is_symlink() or rules.exists():
            rules.unlink()
        rules.symlink_to(deploy / "rules")
        port = self.settings.prometheus_port or free_port()
        self.prometheus_url = f"http://127.0.0.1:{port}"
        return Child(
            "prometheus",
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                # the traces' exemplars of the duration histograms (docs/metrics.md)
                "--enable-feature=exemplar-storage",
            ],
        )

    def _spawn(self, child: Child) -> None:
        child.started_at = time.monotonic()
        logs = self.data / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"{child.name}.log", "ab") as out:
            child.process = subprocess.Popen(
                child.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={
                    **child_env(self.settings.app_dir),
                    "SHARDFLOW_LOG_FORMAT": self.settings.log_format,
                    **child.env,
                },
                preexec_fn=die_with_parent,
            )

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart crashed children, and crashed Postgres servers, until ``stop`` is set."""
        while not stop.is_set():
            await self._supervise_servers(stop)
            exited = [c for c in self.children if c.process and c.process.poll() is not None]
            if exited:
                # A SIGTERM sent to the whole group reaches the children and us together:
                # give our own handler a moment, so shutdown never restarts anything.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
            now = time.monotonic()
            for child in exited:
                if self.stopping or stop.is_set():
                    return
                assert child.process is not None
                if not _restart_due(child, now, "child_exited child", child.process.returncode):
                    continue
                child.retry_at = None
                child.restarts += 1
                self._spawn(child)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def _supervise_servers(self, stop: asyncio.Event) -> None:
        """A server that exited (a killed postmaster) is reaped at once, so its pid is
        gone and nothing blocks its next start, then restarted with the children's
        backoff. Meanwhile the routers answer 503 for its slots; its orphaned backends
        exit on their own when they notice the postmaster died, which the retries wait out."""
        now = time.monotonic()
        for name, server in list(self.pg.servers.items()):
            if server.process is None or server.process.poll() is None:
                continue
            watch = self._server_watch.setdefault(name, Child(name, []))
            code = server.process.returncode
            due = _restart_due(watch, now, "server_exited server", code)
            if not due or self.stopping or stop.is_set():
                continue
            watch.retry_at = None
            watch.started_at = now
            try:
                restarted = self.pg.start_one(name)
                await asyncio.to_thread(self.pg.wait_ready, restarted, 30.0)
            except LauncherError as exc:
                log.warning("event=server_restart_failed server=%s error=%r", name, exc)
                continue
            watch.restarts += 1
            log.info("event=server_restarted server=%s port=%d", name, restarted.port)

    def stop(self) -> None:
        self.stopping = True
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.pg.stop()

    def log_tail(self, child: str, lines: int = 8) -> str:
        """The last lines a child wrote (its log lives in the cluster folder, which a
        benchmark's temporary cluster removes: an error must carry it)."""
        path = self.data / "logs" / f"{child}.log"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"(no log at {path})"
        return "\n".join(text.splitlines()[-lines:]) or "(empty)"

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every router answers /readyz and every workflow name is registered."""
        import aiohttp

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Each probe bounded: a port that accepts and never answers must not hang us.
        probe = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=probe) as http:
            names = [router_child(i) for i in range(len(self.router_urls))]
            front = [(self.url, "haproxy")] if self.settings.haproxy else []
            for url, name in [*zip(self.router_urls, names, strict=True), *front]:
                while True:
                    try:
                        async with http.get(url + "/readyz") as resp:
                            if resp.status == 200:
                                break
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    if loop.time() > deadline:
                        raise TimeoutError(
                            f"{name} ({url}) not ready within {timeout} s; the end of its "
                            f"log:\n{self.log_tail(name)}"
                        )
                    await asyncio.sleep(0.1)
        catalog = await Catalog.connect(self.catalog_dsn, pool_size=1)
        try:
            while len(await catalog.registered_shards()) < len(self.shard_dsns):
                if loop.time() > deadline:
                    raise TimeoutError("executors did not register within the timeout")
                await asyncio.sleep(0.1)
        finally:
            await catalog.close()
