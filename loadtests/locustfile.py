"""locust scenarios of workload W3: Shardflow's HTTP API, and the same workflow on the
baselines of loadtests.compare (Temporal, RabbitMQ).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 --headless -u 64 -r 64 -t 30s

``ShardflowUser`` starts a W3 workflow and waits for its result with the long poll; the
whole start-to-result time is its own locust metric (type ``WORKFLOW``, name
``start_to_result``) beside the ``start`` and ``result`` requests. ``ShardflowBatchUser``
only starts workflows, ``BATCH`` at a time, through the batch endpoint.
``TemporalUser`` (``--host`` the dev server's HTTP API) and ``RabbitUser``
(``--host`` an AMQP URL) report the same ``WORKFLOW start_to_result``. Pick one by naming
its class after the options.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import pika  # type: ignore[import-untyped]  # untyped; gevent-patched by locust
from locust import FastHttpUser, User, task

from examples.bench import make_input

BATCH = 50
COMPLETED = "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED"
_numbers = itertools.count()


def _workflow() -> dict[str, Any]:
    return {"workflow": "w3", "input": make_input(next(_numbers)), "id": uuid.uuid4().hex}


@contextmanager
def _start_to_result(user: User) -> Iterator[list[Exception]]:
    """Time the block as ``WORKFLOW start_to_result``; a failure appended to the yielded
    list marks it failed."""
    t0 = time.perf_counter()
    failures: list[Exception] = []
    try:
        yield failures
    except Exception as exc:  # reported as the workflow's failure, as locust does
        failures.append(exc)
    user.environment.events.request.fire(
        request_type="WORKFLOW",
        name="start_to_result",
        response_time=(time.perf_counter() - t0) * 1000,
        response_length=0,
        exception=failures[0] if failures else None,
        context={},
    )


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


class TemporalUser(FastHttpUser):
    """W3 on Temporal through the dev server's HTTP API (``--host http://HOST:HTTP_PORT``):
    start the workflow, then long-poll its history for the close event (one request that
    answers when the workflow ends, as ``execute_workflow`` waits for it)."""

    @task
    def start_and_wait(self) -> None:
        from loadtests.temporal_w3 import TASK_QUEUE

        wid = uuid.uuid4().hex
        path = f"/api/v1/namespaces/default/workflows/{wid}"
        body = {
            "workflowType": {"name": "w3"},
            "taskQueue": {"name": TASK_QUEUE},
            "input": [make_input(next(_numbers))],
        }
        with _start_to_result(self) as failures:
            with self.client.post(path, json=body, name="start", catch_response=True) as r:
                if r.status_code != 200:
                    r.failure(f"start answered {r.status_code}")
                    failures.append(RuntimeError(f"start answered {r.status_code}"))
                    return
            query = "waitNewEvent=true&historyEventFilterType=HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT"
            token = ""
            while True:  # the long poll answers at the close event, or empty with a token
                url = f"{path}/history?{query}" + (
                    f"&nextPageToken={quote(token)}" if token else ""
                )
                with self.client.get(url, name="result", catch_response=True) as r:
                    doc = r.json() if r.status_code == 200 else {}
                    events = doc.get("history", {}).get("events", [])
                    if events:
                        if events[-1]["eventType"] != COMPLETED:
                            r.failure(events[-1]["eventType"])
                            failures.append(RuntimeError(events[-1]["eventType"]))
                        return
                    token = doc.get("nextPageToken", "")
                    if not token:
                        r.failure(f"result answered {r.status_code} without the close event")
                        failures.append(RuntimeError("no close event"))
                        return
                    r.success()


class RabbitUser(User):
    """W3 on RabbitMQ (``--host amqp://...``), the protocol of loadtests/rabbit_w3.py: publish
    the order (persistent, confirmed) to the first step's queue with a reply queue of this
    user's own, then wait for the reply. pika's blocking connection, made cooperative by the
    gevent patching locust applies."""

    def on_start(self) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(self.host))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.replies = self.channel.queue_declare("", exclusive=True).method.queue

    def on_stop(self) -> None:
        self.connection.close()

    @task
    def publish_and_wait(self) -> None:
        from loadtests.rabbit_w3 import QUEUES

        cid = uuid.uuid4().hex
        body = {"order": make_input(next(_numbers)), "results": {}}
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            correlation_id=cid,
            reply_to=self.replies,
            content_type="application/json",
        )
        with _start_to_result(self) as failures:
            self.channel.basic_publish("", QUEUES[0], json.dumps(body).encode(), properties)
            for _method, props, reply in self.channel.consume(
                self.replies, auto_ack=True, inactivity_timeout=30
            ):
                if props is None:  # 30 s without a reply
                    failures.append(RuntimeError("no reply in 30 s"))
                    break
                if props.correlation_id == cid:
                    if "notified" not in json.loads(reply):
                        failures.append(RuntimeError("bad reply"))
                    break
            self.channel.cancel()
