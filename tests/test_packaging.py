"""Shardflow as a user installs it: one top-level package, working from any directory.

The wheel is built from a clean copy of the tree (``git archive`` of the work tree as
``git stash create`` snapshots it: no stale ``build/``), installed with its dependencies
into a new virtual environment, and run from a folder of a user's own that holds decoy
``router.py``, ``coordinator.py``, ``metrics.py`` and ``shard.py`` beside their app.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_dev import Dev, request

COMPONENTS = ("shard", "router", "coordinator", "metrics")
NOT_SHIPPED = ("examples", "loadtests", "tests")
SOURCES = ("shard", "router", "coordinator", "metrics", "shardflow", "loadtests", "tests")

APP = """
from shardflow import Context, step, workflow


@step
async def shout(text: str) -> str:
    return text.upper()


@workflow(name="greet")
async def greet(ctx: Context, who: str) -> str:
    return await shout(f"hello {who}")
"""


def _imported_names(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def _python_files(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((ROOT / f).rglob("*.py")) if not p.is_symlink()]


def test_nothing_imports_a_component_by_its_bare_name() -> None:
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in _python_files(*SOURCES, "examples")
        for name in _imported_names(path)
        if name.split(".")[0] in COMPONENTS
    ]
    assert found == []


def test_no_shipped_module_imports_the_examples_or_the_benchmarks() -> None:
    shipped = _python_files("shard", "router", "coordinator", "metrics", "shardflow")
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in shipped
        for name in _imported_names(path)
        if name.split(".")[0] in NOT_SHIPPED
    ]
    assert found == []


@pytest.mark.parametrize("name", COMPONENTS)
def test_a_component_refuses_its_bare_name(name: str) -> None:
    """With the repository root on sys.path, `import shard` would load a second copy of
    every module (two ShardflowError classes): it is refused instead."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert f"import shardflow.{name}, not {name}" in done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of the work tree, installed into a new virtual environment: its python."""
    base = tmp_path_factory.mktemp("wheel")
    tree = subprocess.run(
        ["git", "stash", "create"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    src = base / "src"
    src.mkdir()
    archive = subprocess.run(
        ["git", "archive", tree or "HEAD"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    dist = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("shardflow-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
        record = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD")))
    assert tops == {"shardflow", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                    + ".dist-info"}, tops  # fmt: skip
    lines = record.decode().splitlines()
    assert all(line.startswith(("shardflow/", "shardflow-")) for line in lines), lines
    assert "shardflow/py.typed" in record.decode()
    assert "shardflow/shard/sql/functions/20_start.sql" in record.decode()
    assert "shardflow/router/ui/app.js" in record.decode()  # the console ships inside
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True
    )
    return python


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project: their app and modules named like Shardflow's components."""
    folder = tmp_path / "project"
    folder.mkdir()
    for decoy in (*COMPONENTS, "examples"):
        (folder / f"{decoy}.py").write_text("raise RuntimeError('a decoy was imported')\n")
    (folder / "greeter.py").write_text(APP)
    os.chmod(tmp_path, 0o755)
    os.chmod(folder, 0o755)
    return folder


def _user_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_the_installed_cli_answers_from_a_users_folder(installed: Path, project: Path) -> None:
    shardflow = str(installed.parent / "shardflow")
    for args in (["--version"], ["--help"], ["dev", "--help"]):
        done = subprocess.run(
            [shardflow, *args], cwd=project, env=_user_env(), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
    version = subprocess.run(
        [shardflow, "--version"], cwd=project, env=_user_env(), capture_output=True, text=True
    )
    assert version.stdout.startswith("shardflow 0.")


def test_an_app_that_cannot_be_imported_is_one_line(installed: Path, project: Path) -> None:
    done = subprocess.run(
        [str(installed.parent / "shardflow"), "dev", "--app", "no_such_app", "--data", "x"],
        cwd=project,
        env=_user_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "no_such_app" in done.stderr and "invalid_setting" in done.stderr
    assert not (project / "x").exists()


def test_the_installed_dev_cluster_runs_a_users_app(installed: Path, project: Path) -> None:
    (project / "data").mkdir()
    dev = Dev(
        project / "data",
        python=str(installed),
        cwd=project,
        env=_user_env(),
        app="greeter",
        workflow="greet",
    )
    try:
        dev.start()
        code, doc = request(
            dev.url + "/v1/workflows?wait=30",
            "POST",
            json.dumps({"workflow": "greet", "input": "ada", "id": "greet-1"}).encode(),
        )
        assert code in (200, 201), doc
        code, doc = request(dev.url + "/v1/workflows/greet-1/result?timeout=30")
        assert code == 200 and doc["output"] == "HELLO ADA", doc
        pids = dev.tree()
    finally:
        dev.remove()
    deadline = time.monotonic() + 30  # a wait for the condition, not an assert on time
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in pids if _alive(pid)] == [], "a process outlived shardflow dev"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return state != "Z"
