"""OpenTelemetry traces: the SDK's in-memory exporter for the shape of a trace, and a real
OTLP/HTTP export from executor processes, one of them SIGKILLed mid-step, to a receiver
here that decodes the protobuf payload."""

from __future__ import annotations

import asyncio
import gzip
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.openmetrics.exposition import generate_latest

from shardflow.infra import tracing
from shardflow.infra.errors import SettingsError
from shardflow.shard.client import ShardClient
from tests.cluster_fixtures import LiveCluster
from tests.waiting import until

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE = int(PARENT[3:35], 16)


def test_traceparent_headers_and_the_switch():
    assert tracing.parse_traceparent(PARENT.upper()) == PARENT
    for bad in (None, 7, "", "00-xyz", PARENT + "-extra", "00-" + "0" * 32 + PARENT[35:]):
        assert tracing.parse_traceparent(bad) is None
    assert tracing.parse_traceparent(PARENT[:36] + "0" * 16 + "-01") is None
    assert not tracing.enabled_by({})
    assert tracing.enabled_by({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not tracing.enabled_by(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}
    )
    assert not tracing.enabled_by({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    assert not tracing.configure("t", {})  # off: nothing installed
    assert not tracing.on()
    with pytest.raises(SettingsError, match="not one of"):
        tracing.configure("t", {"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(SettingsError, match="known: asyncpg, aiohttp"):
        tracing.configure(
            "t", {"OTEL_TRACES_EXPORTER": "console", "SHARDFLOW_OTEL_INSTRUMENT": "redis"}
        )
    tracing.shutdown()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.shutdown()


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_trace_follows_a_workflow_through_the_router_runs_steps_and_children(
    spans: InMemorySpanExporter, cluster: LiveCluster
):
    client = await cluster.add_router()
    doc = await client.start("family", {"n": 40}, traceparent=PARENT, wait=30)
    assert doc["status"] == "completed", doc

    async def ended() -> bool:  # the last run's span ends after its answer may have gone
        return any(
            s.name == "run family" and _attrs(s)["shardflow.outcome"] == "completed"
            for s in spans.get_finished_spans()
        )

    await until(ended, what="the last run's span")
    finished = list(spans.get_finished_spans())
    assert {s.context.trace_id for s in finished} == {TRACE}, "all in the caller's trace"
    (start,) = [s for s in finished if s.name == "start family"]
    assert _parent_id(start) == int(PARENT[36:52], 16)
    runs = [s for s in finished if s.name == "run family"]
    assert len(runs) >= 2  # the first run, and resumes after its children finish
    assert {_parent_id(r) for r in runs} == {start.context.span_id}
    assert [_attrs(r)["shardflow.outcome"] for r in runs].count("completed") == 1
    run_ids = {r.context.span_id for r in runs}
    children = [s for s in finished if s.name in ("run w3", "run failing")]
    assert len(children) == 3 and all(_parent_id(c) in run_ids for c in children)
    (failing,) = [s for s in finished if s.name == "run failing"]
    assert _attrs(failing)["shardflow.outcome"] == "failed"
    assert failing.status.status_code.name == "ERROR"
    steps = [s for s in finished if s.name.startswith("step ")]
    child_runs = {c.context.span_id: c for c in children}
    by_run: dict[str, list[str]] = {}
    for s in steps:
        run = child_runs[_parent_id(s) or 0]
        by_run.setdefault(run.name + str(run.context.span_id), []).append(s.name)
        attrs = _attrs(s)
        assert attrs["shardflow.workflow.id"] == _attrs(run)["shardflow.workflow.id"]
        assert attrs["shardflow.step.attempt"] == 1 and attrs["shardflow.shard"]
    w3_steps = [names for key, names in by_run.items() if key.startswith("run w3")]
    assert w3_steps == [["step reserve", "step charge", "step notify"]] * 2
    # each step's duration was observed, its trace ID the exemplar (OpenMetrics)
    shard = _attrs(children[0])["shardflow.shard"]
    exposed = generate_latest(cluster.executors[shard].metrics.registry).decode()
    assert f'# {{trace_id="{PARENT[3:35]}"}}' in exposed


async def test_step_attempts_are_spans_and_a_client_passes_its_context(
    spans: InMemorySpanExporter, client: ShardClient, start_executor: Any
):
    await start_executor()
    app = TracerProvider().get_tracer("app")  # the application's own tracing
    with app.start_as_current_span("enqueue") as enqueue:
        wid = await client.start("retry_me", {"key": "traced", "fail_times": 1})
    await client.result(wid, timeout=30)
    assert enqueue.get_span_context().trace_id in {
        s.context.trace_id for s in spans.get_finished_spans()
    }
    flaky = [s for s in spans.get_finished_spans() if s.name == "step flaky"]
    assert [
        (_attrs(s)["shardflow.step.attempt"], _attrs(s)["shardflow.outcome"]) for s in flaky
    ] == [
        (1, "retrying"),
        (2, "completed"),
    ]
    assert all(s.context.trace_id == enqueue.get_span_context().trace_id for s in flaky)
    assert flaky[0].events and flaky[0].events[0].name == "exception"


async def test_without_tracing_the_context_is_stored_and_children_inherit_it(
    client: ShardClient, start_executor: Any
):
    await start_executor()
    wid = await client.start("family", {"n": 7}, traceparent=PARENT)
    await client.result(wid, timeout=30)
    rows = await client.pool.fetch("SELECT id, traceparent FROM shardflow.workflows")
    assert len(rows) == 4 and {r["traceparent"] for r in rows} == {PARENT}


# -- a real OTLP/HTTP export across a SIGKILL ------------------------------------------------


class Receiver:
    """An OTLP/HTTP trace receiver: decodes each export request into its spans."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource in export.resource_spans:
            service = next(
                a.value.string_value
                for a in resource.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource.scope_spans:
                for s in scope.spans:
                    attrs = {a.key: _value(a.value) for a in s.attributes}
                    self.spans.append(
                        {
                            "service": service,
                            "name": s.name,
                            "trace": s.trace_id.hex(),
                            "id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(),
                            "ms": (s.end_time_unix_nano - s.start_time_unix_nano) / 1e6,
                            "start": s.start_time_unix_nano,
                            **attrs,
                        }
                    )
        return web.Response(
            body=b"", content_type="application/x-protobuf"
        )  # an empty ExportTraceServiceResponse


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value"))


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield rec, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_one_trace_shows_a_w3_across_an_executor_sigkill(
    client: ShardClient, spawn_executor: Any, receiver: tuple[Receiver, str]
):
    rec, endpoint = receiver
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "executor-a",
    }
    victim = spawn_executor(
        "tests.apps.traced", env={**otel, "SHARDFLOW_TEST_KILL_IN_STEP": "1"}, poll_interval=0.05
    )
    await until(
        lambda: client.pool.fetchval("SELECT count(*) FROM shardflow.registry"), what="registry"
    )
    # the application's start, in a span of its own exported to the same receiver (a
    # batch processor: its exporter thread must not block this loop, which serves it)
    app = TracerProvider(resource=Resource.create({"service.name": "app"}))
    app.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint + "/v1/traces")))
    with app.get_tracer("app").start_as_current_span("start traced_w3") as start:
        order = {"order_id": 1, "amount": 2.5, "pad": "t"}
        wid = await client.start("traced_w3", order)  # the current span's context
    await asyncio.to_thread(app.shutdown)
    trace_id = f"{start.get_span_context().trace_id:032x}"
    await until(lambda: asyncio.to_thread(lambda: victim.proc.poll() is not None), timeout=60)
    assert victim.proc.returncode == -signal.SIGKILL
    spawn_executor(
        "tests.apps.traced", env={**otel, "OTEL_SERVICE_NAME": "executor-b"}, poll_interval=0.05
    )
    assert (await client.result(wid, timeout=60))["charged"] == 2.5

    async def all_spans() -> bool:
        names = [s["name"] for s in rec.spans]
        return names.count("step charge") == 1 and "run traced_w3" in names

    await until(all_spans, timeout=30, what="the resumed run's spans")
    trace = sorted((s for s in rec.spans if s["trace"] == trace_id), key=lambda s: s["start"])
    t0 = trace[0]["start"]
    print(
        "\n".join(
            f"{s['service']:<11} {s['name']:<16} at {(s['start'] - t0) / 1e6:9.2f} ms"
            f" for {s['ms']:7.2f} ms"
            for s in trace
        )
    )
    shape = [(s["service"], s["name"]) for s in trace]
    assert shape == [
        ("app", "start traced_w3"),
        ("executor-a", "step reserve"),  # its run's span died with the process
        ("executor-b", "run traced_w3"),
        ("executor-b", "step charge"),
        ("executor-b", "step notify"),
    ]
    first, resumed = trace[1], trace[2]
    assert resumed["parent"] == trace[0]["id"]  # the start's span
    assert resumed["shardflow.run.recovery"] == 1 and resumed["shardflow.run.from_seq"] == 1
    assert resumed["shardflow.outcome"] == "completed"
    assert first["parent"] not in {s["id"] for s in trace}  # the killed run's span
    assert {s["parent"] for s in trace[3:]} == {resumed["id"]}


async def test_asyncpg_instrumentation_adds_a_span_per_statement(dsn: str):
    """SHARDFLOW_OTEL_INSTRUMENT=asyncpg: the library's own spans, under the same provider
    (uninstrumented afterwards: the patch is process-wide)."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing._instrument("asyncpg", provider)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT 41 + 1") == 42
        finally:
            await conn.close()
    finally:
        AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
    texts = [" ".join(map(str, _attrs(s).values())) for s in exporter.get_finished_spans()]
    assert any("SELECT 41 + 1" in t for t in texts), texts
