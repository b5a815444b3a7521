"""Settings: flags over environment over defaults; invalid values named at start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shardflow.devcluster.dev import DevSettings
from shardflow.devcluster.launcher import free_port
from shardflow.infra.errors import SettingsError
from shardflow.router.settings import RouterSettings
from shardflow.shard.executor_settings import ExecutorSettings
from shardflow.shard.faults import Faults
from tests.conftest import ROOT


def test_flags_override_environment_override_defaults():
    env = {
        "SHARDFLOW_DSN": "postgresql://env/db",
        "SHARDFLOW_APP": "a.b,c.d",
        "SHARDFLOW_CONCURRENCY": "64",
    }
    s = ExecutorSettings.load({"concurrency": "32"}, env=env)
    assert s.dsn == "postgresql://env/db" and s.app == ["a.b", "c.d"] and s.concurrency == 32
    assert s.poll_interval == 0.1 and s.metrics_port is None


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        ({}, {"SHARDFLOW_APP": "x"}, "dsn"),
        ({"dsn": "d"}, {}, "app"),
        ({"dsn": "d", "app": ["x"], "concurrency": "many"}, {}, "concurrency"),
        ({"dsn": "d", "app": ["x"], "concurrency": "0"}, {}, "concurrency"),
        ({"dsn": "d", "app": ["x"]}, {"SHARDFLOW_POLL_INTERVAL": "nan"}, "poll_interval"),
        ({"dsn": "d", "app": ["x"], "log_level": "loud"}, {}, "log_level"),
        (
            {"dsn": "d", "app": ["x"], "lease_seconds": "1", "maintenance_interval": "2"},
            {},
            "maintenance_interval",
        ),
    ],
)
def test_invalid_settings_name_the_setting(args: dict, env: dict, setting: str):
    with pytest.raises(SettingsError) as info:
        ExecutorSettings.load(args, env=env)
    assert info.value.details["setting"] == setting
    assert setting in str(info.value)


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        ({"executors": "true"}, "app"),
        ({"executors_for": ["c0"], "app": ["x"]}, "executors_for"),
    ],
)
def test_a_router_s_executors_need_their_app_and_home_shards_need_executors(
    args: dict, setting: str
):
    with pytest.raises(SettingsError) as info:
        RouterSettings.load({"catalog": "c", **args}, env={})
    assert info.value.details["setting"] == setting


@pytest.mark.parametrize(
    "args",
    [{"home_shards": "true", "shards": "2"}, {"home_shards": "true", "fast_path": "false"}],
    ids=["fewer-routers", "no-fast-path"],
)
def test_home_shards_need_the_fast_path_and_a_router_per_shard(args: dict):
    with pytest.raises(SettingsError) as info:
        DevSettings.load({"app": ["x"], "executors_per_shard": "1", **args}, env={})
    assert info.value.details["setting"] == "home_shards"


def test_bad_fault_spec_is_refused():
    with pytest.raises(SettingsError, match="fault"):
        Faults.parse("nowhere=kill")


def test_cli_reports_bad_settings_without_a_traceback():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardflow",
            "executor",
            "--dsn",
            "postgresql://x/y",
            "--app",
            "examples.bench",
            "--concurrency",
            "-3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2
    assert "[invalid_setting]" in proc.stderr and "concurrency" in proc.stderr
    assert "Traceback" not in proc.stderr


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "shardflow", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize(
    "command",
    [
        ["router", "--port", "{port}", "--catalog", "{dsn}"],
        ["cluster", "--catalog", "{dsn}", "status"],
    ],
    ids=["router", "cluster-status"],
)
def test_an_unreachable_catalog_is_a_clear_error_not_a_traceback(command: list[str]):
    dsn = f"postgresql://nobody@127.0.0.1:{free_port()}/nowhere"  # nothing listens there
    args = [a.format(dsn=dsn, port=free_port()) for a in command]
    out, err = _cli(*args).communicate(timeout=120)
    assert "shardflow: error [unavailable]: cannot reach a server" in err, err
    assert "Traceback" not in err + out


def test_a_data_folder_that_cannot_be_made_is_named_not_called_unreachable(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a file where the data folder's parent should be
    out, err = _cli("dev", "--shards", "1", "--data", str(blocker / "data")).communicate(
        timeout=120
    )
    assert f"shardflow: error [file_error]: cannot use {blocker / 'data'}" in err, err
    assert "unavailable" not in err and "Traceback" not in err + out


def test_an_executor_waiting_for_its_shard_stops_on_sigterm():
    """It retries an unreachable shard, and a stop signal ends that wait (it used to be
    ignored until the shard answered)."""
    dsn = f"postgresql://nobody@127.0.0.1:{free_port()}/nowhere"
    proc = _cli("executor", "--dsn", dsn, "--app", "examples.bench")
    assert proc.stderr is not None
    for line in proc.stderr:  # its first failed attempt: it is waiting now
        if "event=connect_failed" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err + out
