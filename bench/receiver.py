"""A webhook receiver for tests and the bench: a small HTTP server that verifies every delivery with the
Standard Webhooks library (nothing of ours) and records the `webhook-id`s and bodies it accepted.

    python -m bench.receiver --port 8099

Each path is an endpoint of its own, told its secret and its behaviour by `POST /_control`
`{"path": "/a", "secret": "whsec_...", "mode": "ok" | "503" | "hang" | "flaky" | "first_fails",
"seconds": 3, "delay": 0.5, "fail_rate": 0.5}`: `503` answers 503 and `hang` holds the request `delay`
seconds then answers 503, each for `seconds` (then back to ok); `flaky` answers 503 at random with
`fail_rate`; `first_fails` answers 503 to the first attempt of each `webhook-id` (of the event `types`
listed, when given: `"types": ["authorization.started"]`); `delay` holds every
request that long first. `GET /_received?path=/a` answers what was accepted
(`{"accepted": [{"id", "body", "at"}], "refused": n, "rejected": n, "in_flight": n, "arrivals": [at...]}`,
`arrivals` the moment of every request, accepted or not).
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from standardwebhooks import Webhook


@dataclass
class Endpoint:
    secret: str = ""
    mode: str = "ok"
    until: float = 0.0
    delay: float = 0.0
    fail_rate: float = 0.0
    accepted: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0  # answered with 503 (on purpose)
    rejected: int = 0  # failed verification
    in_flight: int = 0
    arrivals: list[float] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)  # webhook-ids seen (first_fails)
    types: tuple[str, ...] = ()  # first_fails: only for these event types (empty: every type)


class Receiver:
    def __init__(self, seed: int = 7) -> None:
        self.lock = threading.Lock()
        self.endpoints: dict[str, Endpoint] = {}
        self.random = random.Random(seed)  # noqa: S311 - which request fails, not a secret

    def endpoint(self, path: str) -> Endpoint:
        with self.lock:
            return self.endpoints.setdefault(path, Endpoint())

    def control(self, settings: dict[str, Any]) -> None:
        endpoint = self.endpoint(str(settings["path"]))
        with self.lock:
            endpoint.secret = str(settings.get("secret", endpoint.secret))
            endpoint.mode = str(settings.get("mode", "ok"))
            endpoint.until = time.monotonic() + float(settings.get("seconds", 1e9))
            endpoint.delay = float(settings.get("delay", 0.0))
            endpoint.fail_rate = float(settings.get("fail_rate", 0.0))
            endpoint.types = tuple(settings.get("types", ()))

    def deliver(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        endpoint = self.endpoint(path)
        with self.lock:
            endpoint.in_flight += 1
            endpoint.arrivals.append(time.time())
            mode = endpoint.mode if time.monotonic() < endpoint.until else "ok"
            fail = mode in ("503", "hang") or (mode == "flaky" and self.random.random() < endpoint.fail_rate)
            if mode == "first_fails":
                chosen = not endpoint.types or _event_type(body) in endpoint.types
                fail = chosen and headers.get("webhook-id", "") not in endpoint.tried
                endpoint.tried.add(headers.get("webhook-id", ""))
        try:
            if endpoint.delay or mode == "hang":
                time.sleep(endpoint.delay)
            try:
                Webhook(endpoint.secret).verify(body, headers)
            except Exception:
                with self.lock:
                    endpoint.rejected += 1
                return 400
            with self.lock:
                if fail:
                    endpoint.refused += 1
                    return 503
                endpoint.accepted.append(
                    {"id": headers.get("webhook-id"), "body": body.decode(), "at": time.time()}
                )
            return 204
        finally:
            with self.lock:
                endpoint.in_flight -= 1

    def report(self, path: str) -> dict[str, Any]:
        endpoint = self.endpoint(path)
        with self.lock:
            return {
                "accepted": list(endpoint.accepted),
                "refused": endpoint.refused,
                "rejected": endpoint.rejected,
                "in_flight": endpoint.in_flight,
                "arrivals": list(endpoint.arrivals),
            }


def _event_type(body: bytes) -> str:
    try:
        return str(json.loads(body).get("type", ""))
    except (ValueError, AttributeError):
        return ""


def handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:  # quiet: the report says what arrived
            return

        def _answer(self, status: int, body: dict[str, Any] | None = None) -> None:
            payload = json.dumps(body).encode() if body is not None else b""
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the client gave up (its timeout): nothing to answer
                pass

        def do_GET(self) -> None:  # http.server's name
            parts = urlsplit(self.path)
            if parts.path != "/_received":
                self._answer(404, {})
                return
            path = parse_qs(parts.query).get("path", ["/"])[0]
            self._answer(200, receiver.report(path))

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = urlsplit(self.path).path
            if path == "/_control":
                receiver.control(json.loads(body))
                self._answer(200, {})
                return
            headers = {name.lower(): value for name, value in self.headers.items()}
            self._answer(receiver.deliver(path, body, headers))

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(prog="receiver", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(Receiver(args.seed)))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
