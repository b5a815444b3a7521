"""deploy/ checked without Docker: the image's Dockerfile (hadolint, and that it copies
what the package needs), the Compose stack against the real CLI and settings objects,
its Prometheus, and the commands the stack relies on (`cluster init`, `healthcheck`)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from shardflow.catalog.store import Catalog
from shardflow.cli import build_parser
from shardflow.coordinator import citus
from shardflow.devcluster.launcher import PostgresServer, free_port
from shardflow.metrics.exporter import serve_metrics
from shardflow.router.settings import RouterSettings
from shardflow.shard.executor_settings import ExecutorSettings
from tests.conftest import ROOT, create_database

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"
VENV_BIN = Path(sys.executable).parent
SETTINGS = {"executor": ExecutorSettings, "router": RouterSettings}


def _run(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, cwd=ROOT, **kw)


def test_dockerfiles_pass_hadolint():
    for dockerfile in ("deploy/docker/Dockerfile", "deploy/citus/Dockerfile"):
        out = _run(str(VENV_BIN / "hadolint"), dockerfile)
        assert out.returncode == 0, dockerfile + out.stdout + out.stderr


def test_dockerfile_copies_every_package_and_pins_this_version():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (?:--chown=\S+ )?(\w+) \./\1$", text, re.M))
    assert packages <= copied
    assert f"shardflow[otel]=={project['project']['version']}" in text  # tracing built in
    ignored = (ROOT / ".dockerignore").read_text()
    for path in [*copied, "pyproject.toml", "README.md"]:
        assert (ROOT / path).exists() and f"!{path}" in ignored, path
    assert re.search(r"^USER \d+:\d+$", text, re.M), "the image runs as a non-root user"
    assert "HEALTHCHECK" in text and '"healthcheck"' in text


def test_deploy_yaml_passes_yamllint():
    files = [str(p) for p in DEPLOY.rglob("*.yml")] + [str(p) for p in DEPLOY.rglob("*.yaml")]
    config = "{extends: relaxed, rules: {line-length: disable}}"  # runbook prose
    out = _run(str(VENV_BIN / "yamllint"), "-s", "-d", config, *files)
    assert out.returncode == 0, out.stdout + out.stderr


def _interpolate(value: Any) -> Any:
    """Compose's ${VAR:-default} with nothing set in the environment."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), value)
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


STACKS = {
    "docker-compose.yml": ["shard1", "shard2", "shard3", "shard4"],
    "citus.yml": ["s1", "s2", "s3", "s4"],
}


@pytest.fixture(scope="module", params=sorted(STACKS))
def stack(request: pytest.FixtureRequest) -> tuple[dict[str, Any], list[str]]:
    """(the services of a Compose file, the shards its executors should serve)."""
    doc = yaml.safe_load((COMPOSE / request.param).read_text())
    return dict(_interpolate(doc)["services"]), STACKS[request.param]


def _dsn_host(dsn: str) -> str:
    return dsn.split("@", 1)[1].split(":", 1)[0]


def test_compose_commands_and_environment_load_with_the_real_settings(stack):
    parser = build_parser()
    roles: dict[str, list[str]] = {}
    compose, expected_executors = stack
    for name, svc in compose.items():
        if svc.get("image") != "shardflow:latest":
            continue
        args = parser.parse_args(svc["command"])
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        roles.setdefault(args.command, []).append(name)
        if args.command in SETTINGS:
            settings = SETTINGS[args.command].load(vars(args), env)
            for dsn in filter(None, [getattr(settings, "dsn", None), settings.catalog]):
                assert _dsn_host(dsn) in compose, (name, dsn)
        elif args.command == "coordinator":
            from shardflow.coordinator.leader import CoordinatorSettings

            settings = CoordinatorSettings.load(vars(args), env)
            assert settings.metrics_port == 9100 and settings.metrics_host == "0.0.0.0"
        elif args.command == "citus-init":
            assert _dsn_host(args.dsn) in compose
            for node in [args.coordinator_host, *args.worker]:
                assert node.split(":")[0] in compose, node
            env_dsns = {
                s["environment"]["SHARDFLOW_SHARD"]: s["environment"]["SHARDFLOW_DSN"]
                for s in compose.values()
                if s.get("command") == ["executor"]
            }
            assert (
                env_dsns
                == citus.Layout(
                    args.dsn,
                    {
                        f"s{k}": citus.shard_dsn(args.dsn, f"shardflow_s{k}")
                        for k in range(1, args.shards + 1)
                    },
                ).shards
            )  # the executors point at the schemas citus-init creates
        else:
            assert (args.command, args.action) == ("cluster", "init")
            for pair in args.shard:
                shard, dsn = pair.split("=", 1)
                assert shard in compose and _dsn_host(dsn) == shard
        for dep in svc.get("depends_on") or {}:
            assert dep in compose, (name, dep)
    assert len(roles["router"]) == 2 and len(roles["coordinator"]) == 2
    executors = [compose[n]["environment"]["SHARDFLOW_SHARD"] for n in roles["executor"]]
    assert sorted(executors) == expected_executors


def test_compose_haproxy_prometheus_and_grafana_point_at_real_things(stack):
    compose, _ = stack
    for svc in compose.values():
        for volume in svc.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), volume
    routers = {n for n, s in compose.items() if s.get("command") == ["router"]}
    servers = re.findall(
        r"^\s+server \S+ (\S+):(\d+)", (DEPLOY / "haproxy" / "haproxy.cfg").read_text(), re.M
    )
    assert {host for host, _ in servers} == routers
    assert {int(port) for _, port in servers} == {
        int(compose[r]["environment"]["SHARDFLOW_PORT"]) for r in routers
    }
    if "prometheus" not in compose:
        return
    prom = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    for job in prom["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            env = compose[host].get("environment") or {}
            expected = env.get("SHARDFLOW_METRICS_PORT") or env.get("SHARDFLOW_PORT") or "8404"
            assert port == str(expected), target
    out = _run("promtool", "check", "config", "deploy/compose/prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_healthcheck_command_probes_healthz():
    async def probe() -> tuple[int, int]:
        from prometheus_client import CollectorRegistry

        runner, port = await serve_metrics(CollectorRegistry(), "127.0.0.1", 0)
        try:
            env = {"SHARDFLOW_METRICS_PORT": str(port), "PATH": "/usr/bin:/bin"}
            up = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "shardflow", "healthcheck", env=env, cwd=ROOT
            )
            closed = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "shardflow",
                "healthcheck",
                "--url",
                f"http://127.0.0.1:{free_port()}/healthz",
                cwd=ROOT,
                stderr=asyncio.subprocess.DEVNULL,
            )
            return await up.wait(), await closed.wait()
        finally:
            await runner.cleanup()

    assert asyncio.run(probe()) == (0, 1)


async def test_cluster_init_is_idempotent_and_refuses_a_changed_slot_count(pg: PostgresServer):
    catalog_dsn = await create_database(pg, "template0")
    a = await create_database(pg, "template0")
    b = await create_database(pg, "template0")
    b += ("&" if "?" in b else "?") + "sslmode=prefer"  # TLS if offered

    async def init(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shardflow",
            "cluster",
            "--catalog",
            catalog_dsn,
            "init",
            *args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    first = await init("--slots", "64", "--shard", f"a={a}", "--shard", f"b={b}")
    assert first[0] == 0 and "a, b" in first[1], first
    again = await init("--slots", "64", "--shard", f"a={a}", "--shard", f"b={b}")
    assert again[0] == 0 and "none" in again[1], again
    changed = await init("--slots", "128", "--shard", f"a={a}")
    assert changed[0] == 2 and "64 slots" in changed[1], changed
    malformed = await init("--shard", "just-a-name")
    assert malformed[0] == 2 and "ID=DSN" in malformed[1], malformed
    catalog = await Catalog.connect(catalog_dsn)
    try:
        owners = (await catalog.slot_map()).owners
    finally:
        await catalog.close()
    assert sorted(owners.count(s) for s in ("a", "b")) == [32, 32]
