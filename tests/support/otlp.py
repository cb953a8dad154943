"""OTLP trace receivers for tests: a local HTTP server (`OtlpReceiver`, reading each export as the bench's
trace sink does, with `bench.otlp`) or gRPC server (`GrpcOtlpReceiver`) on a free port that decodes each
`ExportTraceServiceRequest` (opentelemetry-proto) and keeps its spans; and `silent_collector`, one that
takes connections and never answers."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from bench.otlp import EXPORT_PATH, answer_export, read_export

KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    links: tuple[str, ...] = ()  # the trace ids of its links


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return getattr(value, which) if which else None


def spans_of(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = {item.key: _value(item.value) for item in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        attributes={item.key: _value(item.value) for item in span.attributes},
                        links=tuple(link.trace_id.hex() for link in span.links),
                    )
                )
    return spans


class _Received:
    """The spans a receiver has been sent so far; a `with` block stops it on leaving."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()

    def _keep(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self.spans.extend(spans)
            self.requests += 1

    def received(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def wait_for(
        self, condition: Callable[[list[ReceivedSpan]], bool], timeout: float, what: str
    ) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.received()
            if condition(spans):
                return spans
            time.sleep(0.1)
        raise AssertionError(f"no {what} within {timeout} s; spans: {[s.name for s in self.received()]}")


class OtlpReceiver(_Received):
    """POST /v1/traces on 127.0.0.1:`port`; `spans` holds every span received so far."""

    def __init__(self) -> None:
        super().__init__()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path != EXPORT_PATH:
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    receiver._keep([])
                    answer_export(self, 404)
                    return
                receiver._keep(spans_of(read_export(self).request))
                answer_export(self)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class GrpcOtlpReceiver(_Received):
    """OTLP over gRPC (TraceService/Export) on 127.0.0.1:`port` (a free one unless given), plaintext.

    gRPC's threads in this process can abort a child it forks meanwhile (the child's copy of gRPC's
    poller: "epoll_wait error: Bad file descriptor", then SIGABRT): start the processes that export to
    it first, on a port chosen beforehand, then the receiver."""

    def __init__(self, port: int = 0) -> None:
        super().__init__()
        receiver = self

        class Collector(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: ExportTraceServiceRequest, _context: Any) -> ExportTraceServiceResponse:
                receiver._keep(spans_of(request))
                return ExportTraceServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self.url = f"http://127.0.0.1:{self.port}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)


@contextlib.contextmanager
def silent_collector() -> Iterator[str]:
    """The URL of a collector that takes each connection (the kernel's backlog does) and never answers,
    as one that hangs would."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(128)
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
