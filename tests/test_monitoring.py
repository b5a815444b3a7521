"""Prometheus rules and Grafana dashboards, checked by promtool and by a real Prometheus
scraping a live `shardflow dev` cluster: every recording rule and every panel answers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import asyncpg
import pytest
import yaml

from shardflow.devcluster.launcher import free_port
from shardflow.metrics.docs import rows
from tests.conftest import ROOT
from tests.test_dev import Dev, request

DEPLOY = ROOT / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))


def _promtool(*args: str) -> str:
    out = subprocess.run(
        ["promtool", *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_promtool_checks_config_rules_and_alert_unit_tests():
    _promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in _promtool("check", "rules", "rules/shardflow.yml")
    assert "SUCCESS" in _promtool("test", "rules", "tests/alerts_test.yml")


def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "shardflow.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_unit_test_a_severity_and_a_runbook():
    tests = (DEPLOY / "prometheus" / "tests" / "alerts_test.yml").read_text()
    runbooks = (ROOT / "docs" / "operations.md").read_text()
    alerts = _alerts()
    names = {a["alert"] for a in alerts}
    assert {"ShardflowNoLeader", "ShardflowNoExecutors", "ShardflowRouterErrors"} <= names
    assert "ShardflowP99OverSLO" not in names  # start-to-finish includes timers and events
    for alert in alerts:
        name = alert["alert"]
        assert f"alertname: {name}\n" in tests, name
        assert alert["labels"]["severity"] in ("critical", "warning", "info"), name
        assert set(alert["annotations"]) == {"summary", "description", "runbook_url"}, name
        assert alert["annotations"]["runbook_url"] == f"docs/operations.md#{name.lower()}"
        assert f"\n### {name}\n" in runbooks, f"no runbook section for {name}"


def _panel_exprs() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] and board["panels"]
        for panel in board["panels"]:
            for target in panel["targets"]:
                found.append((f"{path.stem}/{panel['title']}", target["expr"]))
    return found


def _recording_rules() -> list[tuple[str, str]]:
    text = (DEPLOY / "prometheus" / "rules" / "shardflow.yml").read_text()
    lines = text.splitlines()
    return [
        (lines[i].split(":", 1)[1].strip(), lines[i + 1].split("expr:", 1)[1].strip())
        for i, line in enumerate(lines)
        if line.strip().startswith("- record:")
    ]


def test_dashboards_use_the_template_variables():
    """A data source and a job picked per dashboard, the shard wherever a series has one."""
    sharded = {name for name, _, labels, _, _ in rows() if "shard" in labels.split(", ")}
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        names = [v["name"] for v in board["templating"]["list"]]
        assert names[:2] == ["datasource", "job"], path.name
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            for target in panel["targets"]:
                expr = target["expr"]
                assert target["datasource"]["uid"] == "${datasource}"
                assert 'job=~"$job"' in expr, (path.name, expr)
                if any(re.search(rf"\b{m}(_bucket|_count|_sum)?\{{", expr) for m in sharded):
                    assert 'shard=~"$shard"' in expr and "shard" in names, (path.name, expr)
    overview = json.loads((DEPLOY / "grafana" / "dashboards" / "cluster-overview.json").read_text())
    assert [v["name"] for v in overview["templating"]["list"]][2:] == ["shard", "workflow"]
    assert any(t.get("exemplar") for p in overview["panels"] for t in p["targets"])


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dev, str]]:
    port = free_port()
    dev = Dev(
        tmp_path_factory.mktemp("monitored"),
        "--prometheus",
        "--prometheus-port",
        str(port),
        "--scrape-interval",
        "1s",
        # executors as processes of their own, scraped as such (the no-executor alert
        # watches them stop); the fast path's are served by the router
        "--fast-path",
        "false",
        "--executors-per-shard",
        "1",
    )
    dev.start()
    yield dev, f"http://127.0.0.1:{port}"
    dev.remove()


def _query(prom: str, expr: str) -> list[object]:
    code, doc = request(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert code == 200, doc
    return list(doc["data"]["result"])


def test_every_rule_and_panel_answers_from_a_live_cluster(watched: tuple[Dev, str]):
    dev, prom = watched
    deadline = time.monotonic() + 90
    while True:  # Prometheus up and every target scraped
        try:
            code, doc = request(f"{prom}/api/v1/targets")
            active = doc["data"]["activeTargets"] if code == 200 else []
            if active and all(t["health"] == "up" for t in active) and len(active) >= 4:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "targets not up"
        time.sleep(0.5)
    for i in range(40):  # a small load, so rates and quantiles have samples
        body = json.dumps({"workflow": "w3", "input": {"order_id": i, "amount": 1.0, "pad": "p"}})
        code, started = request(dev.url + "/v1/workflows", "POST", body.encode())
        assert code == 201
        request(f"{dev.url}/v1/workflows/{started['id']}/result?timeout=20")
    exprs = _recording_rules()
    exprs += [(name, expr) for name, _ in _recording_rules() for expr in [name]]
    exprs += [(name, re.sub(r"\$(shard|workflow|job)\b", ".*", e)) for name, e in _panel_exprs()]
    missing: list[str] = []
    deadline = time.monotonic() + 60
    for name, expr in exprs:
        while not _query(prom, expr):
            if time.monotonic() > deadline:
                missing.append(f"{name}: {expr}")
                break
            time.sleep(0.5)
    assert not missing, missing


def test_a_held_lock_raises_the_lock_alert(watched: tuple[Dev, str]):
    """A session holding the row of a sleeping workflow: when its timer fires, the
    executor's claim waits on that lock; the lock metrics and ShardflowLockWaits move."""
    dev, prom = watched
    body = json.dumps({"workflow": "sleeper", "input": {"seconds": 1}}).encode()
    code, started = request(dev.url + "/v1/workflows", "POST", body)
    assert code == 201, started
    dsn = dev.shard_dsn(started["shard"])
    alert = 'ALERTS{alertname="ShardflowLockWaits"}'

    async def hold_the_row() -> None:
        blocker = await asyncpg.connect(dsn)
        try:
            async with blocker.transaction():
                await blocker.execute(
                    "SELECT 1 FROM shardflow.workflows WHERE id = $1 FOR UPDATE", started["id"]
                )
                deadline = time.monotonic() + 90
                for expr in ("max(shardflow_pg_longest_lock_wait_seconds) > 0", alert):
                    while not await asyncio.to_thread(_query, prom, expr):
                        assert time.monotonic() < deadline, f"{expr} never answered"
                        await asyncio.sleep(0.5)
        finally:
            await blocker.close()

    asyncio.run(hold_the_row())
    code, outcome = request(f"{dev.url}/v1/workflows/{started['id']}/result?timeout=30")
    assert code == 200 and outcome["status"] == "completed", outcome


def _for_zero(folder: Path, dev: Dev, log: IO[bytes]) -> tuple[str, subprocess.Popen[bytes]]:
    """A Prometheus of this test's own over the dev cluster's targets, with the alert rules
    of deploy/ at ``for: 0s`` (promtool covers the real durations): its URL."""
    (folder / "rules").mkdir()
    rules = (DEPLOY / "prometheus" / "rules" / "shardflow.yml").read_text()
    (folder / "rules" / "shardflow.yml").write_text(re.sub(r"for: \w+", "for: 0s", rules))
    (targets,) = dev.data.glob("**/prometheus/targets")
    (folder / "targets").symlink_to(targets)
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text().replace(": 5s", ": 1s")
    (folder / "prometheus.yml").write_text(config)
    port = free_port()
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return f"http://127.0.0.1:{port}", proc


@pytest.fixture
def prometheus_for_zero(watched: tuple[Dev, str], tmp_path: Path) -> Iterator[tuple[Dev, str]]:
    dev, _ = watched
    with open(tmp_path / "prometheus.log", "wb") as log:
        url, proc = _for_zero(tmp_path, dev, log)
        try:
            yield dev, url
        finally:
            proc.terminate()
            proc.wait(30)


def _firing(prom: str, alert: str) -> list[dict[str, Any]]:
    try:
        found = _query(prom, f'ALERTS{{alertname="{alert}", alertstate="firing"}}')
    except OSError:  # not listening yet
        return []
    return [dict(cast(dict[str, Any], r)["metric"]) for r in found]


def _wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.5)
    return value


def test_no_executor_and_no_leader_alerts_fire_on_a_live_cluster(
    prometheus_for_zero: tuple[Dev, str],
):
    """SIGSTOP a shard's executors, then the coordinator: their scrapes fail, their series
    go stale, and ShardflowNoExecutors (that shard) then ShardflowNoLeader fire."""
    dev, prom = prometheus_for_zero
    _wait_for(lambda: _quiet(prom), "the rules loaded and everything up, nothing firing")
    executors = _pids(dev, "executor", "shard1")
    assert executors
    for pid in executors:
        os.kill(pid, signal.SIGSTOP)
    try:
        fired = _wait_for(lambda: _firing(prom, "ShardflowNoExecutors"), "ShardflowNoExecutors")
        assert [a["shard"] for a in fired] == ["shard1"] and fired[0]["severity"] == "critical"
    finally:
        for pid in executors:
            os.kill(pid, signal.SIGCONT)
    (coordinator,) = _pids(dev, "coordinator")
    os.kill(coordinator, signal.SIGSTOP)
    try:
        fired = _wait_for(lambda: _firing(prom, "ShardflowNoLeader"), "ShardflowNoLeader")
        assert fired[0]["severity"] == "critical"
    finally:
        os.kill(coordinator, signal.SIGCONT)


def _quiet(prom: str) -> bool:
    try:
        groups = request(f"{prom}/api/v1/rules")[1]["data"]["groups"]
        up = _query(prom, "min(up)")
    except OSError:
        return False
    loaded = any(r.get("name") == "ShardflowNoLeader" for g in groups for r in g["rules"])
    healthy = bool(up) and cast(dict[str, Any], up[0])["value"][1] == "1"
    firing = _firing(prom, "ShardflowNoLeader") + _firing(prom, "ShardflowNoExecutors")
    return loaded and healthy and not firing


def _pids(dev: Dev, *words: str) -> list[int]:
    """The cluster's shardflow processes whose command line holds each of ``words``."""
    found = []
    for pid in dev.tree():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "shardflow" in " ".join(args[:3]) and all(w in args for w in words):
            found.append(pid)
    return found
