"""A trace sink for the bench (`python -m bench --traces`): an OTLP/HTTP endpoint that takes every export
of ours' shim and workers, decodes it and counts its spans, as a collector would, and nothing more.

    python -m bench.traces --port 4318

`POST /v1/traces` takes an `ExportTraceServiceRequest`, read by `bench.otlp` (opentelemetry-proto, which
the `otel` extra brings); `GET /_received` answers `{"exports": n, "spans": n, "bytes": n}`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from cli.processes import Children, free_port, wait_for_port

ENDPOINT_SETTING = "OTEL_EXPORTER_OTLP_ENDPOINT"


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exports = self.spans = self.bytes = 0


def serve(port: int) -> None:
    from bench.otlp import answer_export, read_export  # opentelemetry-proto: the otel extra

    counts = _Counts()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            export = read_export(self)
            with counts.lock:
                counts.exports += 1
                counts.spans += export.span_count
                counts.bytes += export.size
            answer_export(self)

        def do_GET(self) -> None:
            with counts.lock:
                answer = {"exports": counts.exports, "spans": counts.spans, "bytes": counts.bytes}
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def start_sink(children: Children) -> str:
    """A sink as a child process; its URL, for OTEL_EXPORTER_OTLP_ENDPOINT."""
    port = free_port()
    children.start("trace-sink", [sys.executable, "-m", "bench.traces", "--port", str(port)])
    wait_for_port(port)
    return f"http://127.0.0.1:{port}"


def received(url: str) -> dict[str, int]:
    answer: dict[str, int] = httpx.get(f"{url}/_received", timeout=5).json()
    return answer


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.traces", description="An OTLP/HTTP trace sink.")
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args(argv).port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
