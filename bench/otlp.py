"""Reading and answering an OTLP/HTTP trace export (`POST /v1/traces`, an `ExportTraceServiceRequest` of
opentelemetry-proto, which the `otel` extra brings): what the bench's trace sink and the tests' receiver
both decode. Its own module, so the bench and the tests share it without the bench importing the tests."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

EXPORT_PATH = "/v1/traces"


@dataclass(frozen=True)
class Export:
    request: ExportTraceServiceRequest
    size: int  # bytes on the wire, before any gzip is undone

    @property
    def span_count(self) -> int:
        return sum(len(scope.spans) for spans in self.request.resource_spans for scope in spans.scope_spans)


def read_export(handler: BaseHTTPRequestHandler) -> Export:
    """The export a POST carries (its body read whole, gunzipped when `Content-Encoding` says so)."""
    body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    size = len(body)
    if handler.headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return Export(request, size)


def answer_export(handler: BaseHTTPRequestHandler, status: int = 200) -> None:
    """An `ExportTraceServiceResponse`: all spans taken (200), or `status` for a request it refuses."""
    answer = ExportTraceServiceResponse().SerializeToString()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/x-protobuf")
    handler.send_header("Content-Length", str(len(answer)))
    handler.end_headers()
    handler.wfile.write(answer)
