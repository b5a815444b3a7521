"""Prometheus rules and Grafana dashboards, checked by promtool and by a real Prometheus
scraping a live `shardflow dev` cluster: every recording rule and every panel answers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
from collections.abc import Iterator

import asyncpg
import pytest

from shardflow.devcluster.launcher import free_port
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


def test_every_alert_has_a_unit_test():
    rules = (DEPLOY / "prometheus" / "rules" / "shardflow.yml").read_text()
    tests = (DEPLOY / "prometheus" / "tests" / "alerts_test.yml").read_text()
    alerts = [
        line.split(":", 1)[1].strip()
        for line in rules.splitlines()
        if line.strip().startswith("- alert:")
    ]
    assert len(alerts) >= 10
    for alert in alerts:
        assert f"alertname: {alert}\n" in tests, alert


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
    overview = json.loads((DEPLOY / "grafana" / "dashboards" / "cluster-overview.json").read_text())
    names = {v["name"] for v in overview["templating"]["list"]}
    assert names == {"shard", "workflow"}
    assert any("$shard" in e for _, e in _panel_exprs())
    assert any("$workflow" in e for _, e in _panel_exprs())


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
    exprs += [
        (name, e.replace("$shard", ".*").replace("$workflow", ".*")) for name, e in _panel_exprs()
    ]
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
