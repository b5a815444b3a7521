"""OpenTelemetry traces of workflows (the ``shardflow[otel]`` extra), off unless configured.

Configured by the standard variables only: tracing is on in a Shardflow process when
``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``), or it is unset and an
OTLP endpoint is (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``),
unless ``OTEL_SDK_DISABLED=true``. OTLP goes over HTTP/protobuf; ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_BSP_*`` mean what they mean everywhere.
``SHARDFLOW_OTEL_INSTRUMENT=asyncpg,aiohttp`` adds those libraries' own spans.

A workflow's trace: its start (the router's ``start <name>`` span, or the caller's context)
→ each executor run (``run <name>``: the first, and every resume after a sleep, an event or
a crash, in the same trace) → each step attempt (``step <name>``). The start's W3C
``traceparent`` is stored with the workflow (shard migration 0021); a child is started
with its parent run's context. Off, nothing here imports OpenTelemetry, and a
``traceparent`` a start brings is still stored and passed on to children.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from shardflow.infra.errors import SettingsError

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
EXPORTERS = ("otlp", "console", "none")
# SHARDFLOW_OTEL_INSTRUMENT's names and the package that instruments each
INSTRUMENTS = {
    "asyncpg": "opentelemetry-instrumentation-asyncpg",
    "aiohttp": "opentelemetry-instrumentation-aiohttp-server",
}


def parse_traceparent(value: object) -> str | None:
    """A W3C ``traceparent`` (version 00) as it is stored, or None: a malformed header
    is ignored, as the W3C recommendation asks, never an error."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    match = _TRACEPARENT.fullmatch(text)
    if match is None or not match[1].strip("0") or not match[2].strip("0"):
        return None
    return text


def trace_id(traceparent: str | None) -> str | None:
    return traceparent[3:35] if traceparent else None


def enabled_by(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return any(e.strip().lower() not in ("", "none") for e in exporters.split(","))
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


class _State:
    provider: Any = None
    tracer: Any = None


def on() -> bool:
    return _State.tracer is not None


def configure(service: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Install a tracer provider for this process if the OTEL_* variables ask for one."""
    if not enabled_by(environ):
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise SettingsError(
            "the OTEL_* variables ask for traces, but OpenTelemetry is not installed: "
            "pip install 'shardflow[otel]'"
        ) from None
    name = environ.get("OTEL_SERVICE_NAME") or service  # the variable wins, as everywhere
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    for exporter in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        kind = exporter.strip().lower()
        if kind == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif kind == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif kind not in ("", "none"):
            raise SettingsError(
                f"OTEL_TRACES_EXPORTER={kind!r} is not one of {', '.join(EXPORTERS)}"
            )
    _instrument(environ.get("SHARDFLOW_OTEL_INSTRUMENT", ""), provider)
    install(provider)
    return True


def _instrument(names: str, provider: Any) -> None:
    for name in filter(None, (n.strip().lower() for n in names.split(","))):
        if name not in INSTRUMENTS:
            raise SettingsError(
                f"SHARDFLOW_OTEL_INSTRUMENT names {name!r}; known: {', '.join(INSTRUMENTS)}"
            )
        try:
            if name == "asyncpg":
                from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

                AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
            else:
                from opentelemetry.instrumentation.aiohttp_server import (
                    AioHttpServerInstrumentor,
                )

                AioHttpServerInstrumentor().instrument(tracer_provider=provider)
        except ImportError:
            raise SettingsError(
                f"SHARDFLOW_OTEL_INSTRUMENT names {name}, whose instrumentation is not "
                f"installed: pip install {INSTRUMENTS[name]}"
            ) from None


def install(provider: Any) -> None:
    """Trace with ``provider`` (an SDK TracerProvider; tests pass one with an in-memory
    exporter). Shardflow keeps its own: the process's global provider is the application's."""
    _State.provider = provider
    _State.tracer = provider.get_tracer("shardflow")


def shutdown() -> None:
    """Export what is buffered and stop tracing."""
    provider, _State.provider, _State.tracer = _State.provider, None, None
    if provider is not None:
        provider.shutdown()


def _context_of(traceparent: str | None) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent or ""})


def start_span(name: str, traceparent: str | None, kind: str, attributes: Mapping[str, Any]) -> Any:
    """A span under the context ``traceparent`` names (a new trace without one), or None
    when tracing is off. ``kind``: server, consumer or internal."""
    tracer = _State.tracer
    if tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    return tracer.start_span(
        name,
        context=_context_of(traceparent),
        kind=SpanKind[kind.upper()],
        attributes=dict(attributes),
    )


@contextmanager
def span(name: str, traceparent: str | None, attributes: Mapping[str, Any]) -> Iterator[str | None]:
    """A server span around a block (a router's start): yields the ``traceparent`` to store
    (the span's; without tracing, the one the request brought)."""
    current = start_span(name, traceparent, "server", attributes)
    if current is None:
        yield traceparent
        return
    token = activate(current)
    try:
        yield traceparent_of(current)
    except BaseException as exc:
        deactivate(token)
        end(current, "error", exc)
        raise
    deactivate(token)
    end(current, "ok")


def start_child_span(name: str, attributes: Mapping[str, Any]) -> Any:
    """A span under the current one (a step under its run), or None when tracing is off."""
    tracer = _State.tracer
    if tracer is None:
        return None
    return tracer.start_span(name, attributes=dict(attributes))


def activate(span: Any) -> object:
    """Make ``span`` current in this task (spans started by the code under it nest there);
    returns the token ``deactivate`` takes."""
    from opentelemetry import context, trace

    return context.attach(trace.set_span_in_context(span))


def deactivate(token: object) -> None:
    from opentelemetry import context

    context.detach(token)  # type: ignore[arg-type]


def end(span: Any, outcome: str, error: BaseException | None = None) -> None:
    """End ``span`` with ``shardflow.outcome``; an error marks it failed."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("shardflow.outcome", outcome)
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
    span.end()


def traceparent_of(span: Any) -> str:
    """The W3C header naming ``span`` (what a start stores, what a child inherits)."""
    return _header(span.get_span_context())


def trace_id_of(span: Any) -> str:
    return f"{span.get_span_context().trace_id:032x}"


def _header(ctx: Any) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The caller's trace context (the application's own OpenTelemetry, when it is
    installed and a span is current), for a client's start; else None."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    ctx = trace.get_current_span().get_span_context()
    return _header(ctx) if ctx.is_valid else None
