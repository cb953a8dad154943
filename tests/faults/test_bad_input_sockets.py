"""Bad input over real sockets to a shim process: generated requests never get a 5xx nor change the
queue or the flow indexes, and oversized bodies, headers and URLs are refused early."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.support.fault_report import FaultReport
from tests.support.in_process_shim import FUZZ, check_answer
from tests.support.processes import free_port, start_cli, wait_for_http
from tests.support.stack import API_KEY, Pipeline, RedisServer, Sandbox, pipeline_env, start_pipeline
from worker.keys import RedisNames

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SOCKET_CASES = 200  # over real sockets to a shim process


@pytest.fixture(scope="module")
def shim_process(redis_server: RedisServer, sandbox: Sandbox) -> Iterator[Pipeline]:
    running = start_pipeline(redis_server.url, sandbox.url, workers=0)
    yield running
    running.stop()


def test_generated_requests_over_sockets_never_5xx(shim_process: Pipeline, fault_report: FaultReport) -> None:
    schema = schemathesis.openapi.from_url(f"{shim_process.shim_url}/openapi.json")
    caller = {"authorization": f"Bearer {API_KEY}"}
    strategy = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE, headers=caller),
        schema.as_strategy(GenerationMode.NEGATIVE, headers=caller),
    )
    redis: Any = shim_process.redis()
    names = RedisNames(shim_process.prefix)

    def indexes() -> list[int]:
        return [
            redis.llen(f"{shim_process.prefix}.oktopost-connect"),
            redis.zcard(names.deadlines),
            redis.zcard(names.leases),
        ]

    sent = 0

    @settings(FUZZ, max_examples=SOCKET_CASES)
    @given(case=strategy)
    def each_case(case: schemathesis.Case) -> None:
        nonlocal sent
        before = indexes()
        response = case.call(base_url=shim_process.shim_url, timeout=10)
        sent += 1
        check_answer(response)
        if response.status_code >= 400:
            assert indexes() == before

    each_case()
    fault_report.record("5 bad input", faults_injected=sent, socket_requests=sent)
    assert sent >= SOCKET_CASES * 0.9


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


def raw_request(url: str, head: bytes, body_chunks: Sequence[bytes] = (), timeout: float = 5.0) -> RawAnswer:
    """Sends `head` (and what body it is given) over a plain socket and reads the answer, without waiting to
    send more: a server that refuses early answers before the body it was promised has arrived."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(head)
        for chunk in body_chunks:
            try:
                connection.sendall(chunk)
            except OSError:  # the server answered and closed while we were still sending
                break
        received = b""
        while b"\r\n\r\n" not in received or not _complete(received):
            try:
                data = connection.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
    seconds = time.monotonic() - started
    head_part, _, body = received.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return RawAnswer(int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body, seconds)


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            return len(body) >= int(line.split(":")[1])
    return True


def _head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_oversized_bodies_headers_and_urls_are_refused_early(
    shim_process: Pipeline, fault_report: FaultReport
) -> None:
    url = shim_process.shim_url
    auth = ("Authorization", f"Bearer {API_KEY}")
    json_body = [auth, ("Content-Type", "application/json")]
    big = 10 * 1024 * 1024
    answers = {
        # promised 10 MiB, sent 1 KiB: the answer must not wait for the rest
        "declared body": raw_request(
            url,
            _head("POST", "/v1/authorizations", [*json_body, ("Content-Length", str(big))]),
            [b" " * 1024],
        ),
        "chunked body": raw_request(
            url,
            _head("POST", "/v1/authorizations", [*json_body, ("Transfer-Encoding", "chunked")]),
            [f"{32768:x}\r\n".encode() + b" " * 32768 + b"\r\n" for _ in range(8)],
        ),
        "one large header": raw_request(
            url, _head("GET", "/v1/authorizations/x", [auth, ("X-Filler", "a" * 13_000)])
        ),
        "many headers": raw_request(
            url, _head("GET", "/healthz", [(f"X-Filler-{i}", "a" * 40) for i in range(300)])
        ),
        "huge header": raw_request(url, _head("GET", "/healthz", [("X-Filler", "a" * 40_000)])),
        "long query": raw_request(url, _head("GET", "/v1/callback/" + "a" * 40 + "?okt=" + "b" * 6000, [])),
        "huge query": raw_request(url, _head("GET", "/v1/callback/" + "a" * 40 + "?okt=" + "b" * 40_000, [])),
        "long path": raw_request(url, _head("GET", "/v1/callback/" + "a" * 6000, [])),
    }
    expected = {
        "declared body": {413},
        "chunked body": {413},
        "one large header": {431},
        "many headers": {431},
        "huge header": {400, 431},
        "long query": {414},
        "huge query": {400, 414},
        "long path": {414},
    }
    statuses = {name: answer.status for name, answer in answers.items()}
    fault_report.record(
        "5 bad input",
        faults_injected=len(answers),
        server_errors=sum(status >= 500 for status in statuses.values()),
        oversized=statuses,
    )
    for name, answer in answers.items():
        assert answer.status in expected[name], (name, answer)
        assert answer.seconds < 2.0, (name, answer.seconds)
        if answer.status != 400:  # uvicorn's own 400 for a request head over 16 KiB is plain text
            assert httpx.Response(answer.status, content=answer.body).json()["error"]["code"], (name, answer)
    ok = raw_request(url, _head("GET", "/v1/callback/" + "a" * 40 + "?okt=" + "b" * 200, []))
    assert ok.status == 404  # a request within the limits goes through


def test_a_request_past_the_concurrency_limit_gets_the_shims_own_503(
    redis_server: RedisServer, sandbox: Sandbox
) -> None:
    """`shim --limit-concurrency 2` with two connections held open: the third connection's request is
    refused before the app, as any refusal of the shim reads (JSON error, Retry-After, browser headers),
    all but the liveness probe's."""
    port = free_port()
    env = pipeline_env(redis_server.url, sandbox.url, port)
    shim = start_cli(["shim", "--port", str(port), "--limit-concurrency", "2"], env=env, name="shim")
    held: list[socket.socket] = []
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", shim)
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        time.sleep(0.2)  # both accepted
        answer = httpx.get(f"http://127.0.0.1:{port}/v1/callback/{'f' * 40}?okt=abcdefgh1234", timeout=5)
        assert answer.status_code == 503
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["error"]["code"] == "overloaded"
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "referrer-policy" in answer.headers
        # a busy shim is alive (a liveness probe must not restart it), and not ready (out of rotation)
        alive = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert (ready.status_code, ready.json()["error"]["code"]) == (503, "overloaded")
    finally:
        for connection in held:
            connection.close()
        shim.stop()
