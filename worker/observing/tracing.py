"""Traces (OpenTelemetry): one trace per flow, exported only when OTEL_EXPORTER_OTLP_ENDPOINT is set.

Nothing here imports OpenTelemetry when the module loads. Without the setting no process loads any of it,
and every helper below returns at once. With it, `start` sets up the SDK once per process: a batch span
processor and the OTLP exporter that OTEL_EXPORTER_OTLP_PROTOCOL names (`http/protobuf`, the default, or
`grpc`); the SDK reads its other OTEL_* settings itself (OTEL_SERVICE_NAME, OTEL_BSP_*, headers...).

How a flow keeps one trace:
- the caller's POST /v1/authorizations is its root span (continuing the caller's `traceparent`); the flow
  keeps that span's context in its hash, field `traceparent` (`current_traceparent` when it is created);
- a later request about the flow (its callback, start_url, page, selection) continues from it
  (api_shim/traces.py), from whichever browser it comes;
- the task messages we build carry a `traceparent` header (worker/flows/enqueuer.py): the request's or
  the requeueing thread's context, else the flow's own; Celery's instrumentation makes the task's span
  its child;
- each Oktopost call is a client span (`call_started`, `call_ended`), under the request or the task.
Spans name the flow (`flow.id`, `flow.tenant`, `flow.network`...); never a token, key, Authorization
header, cookie or the `okt` query.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from worker.observing.redaction import redact

ENDPOINT_SETTING = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT_SETTING = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"  # the SDK's, for traces alone
PROTOCOLS = ("http/protobuf", "grpc")
TRACEPARENT = "traceparent"  # the W3C header, the message header and the flow's field alike
EXIT_FLUSH_SECONDS = 1.0  # how long an exiting process waits for its last spans to reach the collector

_lock = threading.Lock()
_tracer: Any = None  # set by `start`: tracing is on in this process
_propagator: Any = None
_open_calls: set[Any] = set()  # the Oktopost calls' spans not ended yet (`call_started`)
_provider: Any = None  # the SDK's TracerProvider, once `start` made it


class Flow(Protocol):
    """What a span says of a flow (worker.flows.flow.Flow)."""

    @property
    def flow_id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def network(self) -> str: ...
    @property
    def entity_type(self) -> str: ...
    @property
    def account(self) -> str: ...


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether traces are to be exported: OTEL_EXPORTER_OTLP_ENDPOINT (or the traces' own) is set."""
    settings = os.environ if environ is None else environ
    return any(settings.get(name, "").strip() for name in (ENDPOINT_SETTING, TRACES_ENDPOINT_SETTING))


def active() -> bool:
    """Whether this process records spans (`start` set tracing up)."""
    return _tracer is not None


def start(service: str) -> bool:
    """Sets tracing up in this process, once, when it is wanted; `service`: service.name unless
    OTEL_SERVICE_NAME gives one. True when tracing is on."""
    global _tracer, _propagator, _provider
    if not wanted():
        return False
    with _lock:
        if _tracer is None:
            from opentelemetry import trace
            from opentelemetry.sdk.resources import SERVICE_NAME, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

            named = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
            provider = TracerProvider(resource=Resource.create(named), shutdown_on_exit=False)
            provider.add_span_processor(BatchSpanProcessor(_exporter()))
            atexit.register(_flush_at_exit, provider)
            _provider = provider
            trace.set_tracer_provider(provider)
            _propagator = TraceContextTextMapPropagator()
            _tracer = trace.get_tracer("oktopost-connect")
    return True


def finish() -> None:
    """For a process about to leave with `os._exit` (which runs no atexit hook): what `_flush_at_exit`
    does at a normal exit, now. Nothing when tracing is off."""
    if _provider is not None:
        _flush_at_exit(_provider)


def _flush_at_exit(provider: Any, within: float = EXIT_FLUSH_SECONDS) -> None:
    """The spans still queued are sent as the process exits, for `within` seconds at most: a collector
    that is away or slow (the SDK's own shutdown waits out the exporter's timeout and retries) must not
    hold a stopping worker or shim past its grace period. What is not sent by then is dropped."""
    end_open_calls()
    stopping = threading.Thread(target=provider.shutdown, name="traces-flush", daemon=True)
    try:
        stopping.start()
    except RuntimeError:  # an interpreter that starts no thread at exit (3.12+): the SDK's own shutdown
        provider.shutdown()
        return
    stopping.join(within)


def protocol() -> str:
    """OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf."""
    chosen = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or PROTOCOLS[0]
    ).strip()
    if chosen not in PROTOCOLS:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be one of {', '.join(PROTOCOLS)}, not {chosen!r}")
    return chosen


def _exporter() -> Any:
    if protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def instrument_celery() -> None:
    """Celery's instrumentation: a span for each task run (a child of its message's `traceparent`) and
    for each message `apply_async` publishes."""
    if _tracer is None:
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def current_traceparent() -> str:
    """The current span's context as a W3C traceparent ("" when tracing is off or no span is current)."""
    if _tracer is None:
        return ""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(TRACEPARENT, "")


@contextmanager
def joined(traceparent: str) -> Iterator[None]:
    """Runs the block in the trace of `traceparent` (a flow's), unless a span is current already."""
    if _tracer is None or not traceparent or current_traceparent():
        yield
        return
    from opentelemetry import context

    token = context.attach(_propagator.extract({TRACEPARENT: traceparent}))
    try:
        yield
    finally:
        context.detach(token)


def describe_flow_id(flow_id: str) -> None:
    """Names the flow on the current span."""
    if _tracer is not None:
        _current_span().set_attribute("flow.id", flow_id)


def describe(flow: Flow) -> None:
    """Names the flow, its tenant, network, entity type and Oktopost account on the current span."""
    if _tracer is not None:
        _current_span().set_attributes(flow_attributes(flow))


def flow_attributes(flow: Flow) -> dict[str, str]:
    return {
        "flow.id": flow.flow_id,
        "flow.tenant": flow.tenant,
        "flow.network": flow.network,
        "flow.entity_type": flow.entity_type,
        "oktopost.account": flow.account,
    }


def call_started(step: str, method: str, base_url: str, path: str) -> Any:
    """A client span for one Oktopost call (None when tracing is off), under the current span and naming
    its flow; the token in a verify's or complete's path is masked. End it with `call_ended`."""
    if _tracer is None:
        return None
    from urllib.parse import urlsplit

    from opentelemetry.trace import SpanKind

    server = urlsplit(base_url)
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.full": redact(f"{base_url}{path.partition('?')[0]}"),
        "server.address": server.hostname or "",
        "oktopost.step": step,
    }
    if server.port is not None:
        attributes["server.port"] = server.port
    flow_id = (getattr(_current_span(), "attributes", None) or {}).get("flow.id")
    if flow_id:
        attributes["flow.id"] = flow_id
    span = _tracer.start_span(f"oktopost {step}", kind=SpanKind.CLIENT, attributes=attributes)
    with _lock:
        _open_calls.add(span)
    return span


def call_ended(span: Any, status_code: int | None, failure: BaseException | None) -> None:
    """Ends `call_started`'s span with the answer's status, or the failure's kind (never its text)."""
    if span is None:
        return
    with _lock:
        _open_calls.discard(span)
    if status_code is not None:
        span.set_attribute("http.response.status_code", status_code)
    if failure is not None or (status_code is not None and status_code >= 500):
        _failed(span, type(failure).__name__ if failure is not None else str(status_code))
    span.end()


def end_open_calls() -> None:
    """The Oktopost calls still under way as the process exits (a worker stopped past its grace period
    while a call hung): their spans end now, as failed with `error.type` "worker_stopped", so that the
    trace still shows the call was made."""
    with _lock:
        abandoned = list(_open_calls)
        _open_calls.clear()
    for span in abandoned:
        _failed(span, "worker_stopped")
        span.end()


def _failed(span: Any, kind: str) -> None:
    """A call's span marked failed, with the failure's kind (never its text)."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR))


def _current_span() -> Any:
    from opentelemetry import trace

    return trace.get_current_span()
