"""The HTTP API keeps its contract: schemathesis, with every check, against the live
/v1/openapi.json of a `shardflow dev` cluster of its own (its admin calls, made with the
cluster's admin token, disturb no other test). A few dozen examples per operation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_dev import Dev

pytestmark = pytest.mark.skipif(
    shutil.which("st", path=str(Path(sys.executable).parent)) is None,
    reason="needs schemathesis (make test installs it)",
)


@pytest.fixture(scope="module")
def contract_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    # Long polls cut to 2 s: a fuzzed ?timeout= or ?wait= never outlasts a request.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHARDFLOW_MAX_RESULT_WAIT": "2"}
    dev = Dev(tmp_path_factory.mktemp("contract"), "--app", "examples.orders", env=env)
    dev.start()
    yield dev
    dev.remove()


def test_the_api_keeps_its_openapi_contract(contract_dev: Dev, tmp_path: Path) -> None:
    token = (contract_dev.data / "admin-token").read_text().strip()
    st = str(Path(sys.executable).parent / "st")
    # One worker: with two, CPython 3.11 compiling the generated strategies in two threads
    # at once failed a run here ("AST constructor recursion depth mismatch"), a crash of
    # the tool rather than a finding.
    done = subprocess.run(
        [st, "--config-file", str(ROOT / "tests" / "schemathesis.toml"), "run",
         f"{contract_dev.url}/v1/openapi.json", "--checks", "all", "--max-examples", "25",
         "--workers", "1", "--seed", "20261207", "-H", f"Authorization: Bearer {token}"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
