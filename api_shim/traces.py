"""The shim's traces, when OTEL_EXPORTER_OTLP_ENDPOINT is set (worker/observing/tracing.py says how a
flow keeps one trace); `install` is called only then, and only then is OpenTelemetry imported.

- FastAPI's instrumentation makes a server span of each request, continuing the caller's W3C
  `traceparent`: POST /v1/authorizations is the root of its flow's trace.
- A request about one flow (its callback, start_url, page or selection; the caller's read of it)
  comes from a browser, which knows nothing of that trace, or from a caller in a trace of its own:
  `FlowTraceParent`, outside the instrumentation, gives the request the flow's own `traceparent` (kept
  in the flow's hash), so its span, which names the flow, joins the flow's trace.
- No query string, cookie or Authorization value reaches a span: the URL attributes lose their query's
  secrets (`okt`), and the headers the instrumentation may be told to record are sanitized.
- Probes, /metrics and event streams make no spans.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import redis.asyncio
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from worker.keys import RedisNames
from worker.observing import tracing
from worker.observing.redaction import redact
from worker.replies import text

log = logging.getLogger(__name__)

_ID = r"([A-Za-z0-9_-]{16,64})"  # worker.flows.flow.FLOW_ID_SHAPE
# the requests about one flow, a user's browser's and its caller's (their spans name the flow)
FLOW_REQUESTS = re.compile(
    rf"/v1/callback/{_ID}(?:/confirm)?|/v1/start/{_ID}|/connect/{_ID}(?:/selection)?"
    rf"|/v1/authorizations/{_ID}(?:/selection)?"
)
UNTRACED = "/healthz,/readyz,/metrics,/events$,/static/"
URL_ATTRIBUTES = ("http.url", "url.full", "http.target", "url.query")
SANITIZED_HEADERS = ["authorization", "cookie", "set-cookie", ".*key.*", ".*token.*", ".*secret.*"]


def install(app: FastAPI, client: redis.asyncio.Redis, names: RedisNames) -> None:
    """Traces `app`'s requests; `client` reads each flow's trace context (its `traceparent` field)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls=UNTRACED,
        server_request_hook=_without_secrets,
        http_capture_headers_sanitize_fields=SANITIZED_HEADERS,
        exclude_spans=["receive", "send"],
    )
    instrumented = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        return FlowTraceParent(instrumented(), client, names)

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]


def _without_secrets(span: Any, _scope: Scope) -> None:
    """The instrumentation's URL attributes, okt tokens masked (its own redaction knows cloud keys only)."""
    attributes = getattr(span, "attributes", None) or {}
    for name in URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str):
            span.set_attribute(name, redact(value))


class FlowTraceParent:
    """Gives a request about a flow that flow's trace context, in place of any the browser sent."""

    def __init__(self, app: ASGIApp, client: redis.asyncio.Redis, names: RedisNames) -> None:
        self.app = app
        # Any: redis-py annotates every command as sync-or-async; this client is asyncio
        self.client: Any = client
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (match := FLOW_REQUESTS.fullmatch(scope["path"])):
            flow_id = next(group for group in match.groups() if group)
            traceparent = await self._trace_of(flow_id)
            if traceparent:
                headers = [(k, v) for k, v in scope["headers"] if k not in (b"traceparent", b"tracestate")]
                headers.append((tracing.TRACEPARENT.encode(), traceparent.encode()))
                scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)

    async def _trace_of(self, flow_id: str) -> str:
        try:
            value = await self.client.hget(self.names.flow_state(flow_id), tracing.TRACEPARENT)
        except Exception as error:  # the request goes on in a trace of its own; the route meets Redis too
            log.debug("flow %s: no trace context read: %s", flow_id, type(error).__name__)
            return ""
        return text(value) if value else ""
