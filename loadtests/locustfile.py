"""locust scenarios for Shardflow's HTTP API (workload W3).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 --headless -u 64 -r 64 -t 30s

``ShardflowUser`` starts a W3 workflow and waits for its result with the long poll; the
whole start-to-result time is its own locust metric (type ``WORKFLOW``, name
``start_to_result``) beside the ``start`` and ``result`` requests. ``ShardflowBatchUser``
only starts workflows, ``BATCH`` at a time, through the batch endpoint. Pick one by
naming its class after the options (both run when none is named).
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

from locust import FastHttpUser, task

from examples.bench import make_input

BATCH = 50
_numbers = itertools.count()


def _workflow() -> dict[str, Any]:
    return {"workflow": "w3", "input": make_input(next(_numbers)), "id": uuid.uuid4().hex}


class ShardflowUser(FastHttpUser):
    """Start W3, long-poll its result; report start-to-result as ``WORKFLOW start_to_result``."""

    @task
    def start_and_wait(self) -> None:
        t0 = time.perf_counter()
        body = _workflow()
        failure: Exception | None = None
        with self.client.post("/v1/workflows", json=body, name="start", catch_response=True) as r:
            if r.status_code not in (200, 201):
                r.failure(f"start answered {r.status_code}")
                failure = RuntimeError(f"start answered {r.status_code}")
        while failure is None:
            with self.client.get(
                f"/v1/workflows/{body['id']}/result?timeout=30", name="result", catch_response=True
            ) as r:
                if r.status_code == 200:
                    break
                if r.status_code == 202:
                    r.success()  # still running: poll again
                    continue
                r.failure(f"result answered {r.status_code}")
                failure = RuntimeError(f"result answered {r.status_code}")
        self.environment.events.request.fire(
            request_type="WORKFLOW",
            name="start_to_result",
            response_time=(time.perf_counter() - t0) * 1000,
            response_length=0,
            exception=failure,
            context={},
        )


class ShardflowBatchUser(FastHttpUser):
    """Start-only: ``BATCH`` W3 workflows per request through ``POST /v1/workflows/batch``."""

    @task
    def start_batch(self) -> None:
        body = {"workflows": [_workflow() for _ in range(BATCH)]}
        with self.client.post(
            "/v1/workflows/batch", json=body, name="batch", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"batch answered {r.status_code}")
                return
            failed = [w for w in r.json()["results"] if "error" in w]
            if failed:
                r.failure(f"{len(failed)} of {BATCH} workflows refused")
