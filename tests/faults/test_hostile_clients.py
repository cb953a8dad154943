"""Hostile clients against a shim process: slow and idle request heads are cut off while /healthz keeps
answering fast; odd methods add no metric series; okt spellings with whitespace or control characters
are refused, so one token claims one flow whatever its spelling; no request forges a log line."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.fault_report import FaultReport
from tests.support.stack import API_KEY, Pipeline, RedisServer, Sandbox, start_pipeline

pytestmark = [pytest.mark.faults, pytest.mark.integration]

HEAD_TIMEOUT = 1.5
SLOW_SOCKETS = 300


@pytest.fixture(scope="module")
def shim(redis_server: RedisServer, sandbox: Sandbox) -> Iterator[Pipeline]:
    running = start_pipeline(
        redis_server.url, sandbox.url, workers=0, shim_header_timeout_seconds=HEAD_TIMEOUT, log_level="INFO"
    )
    yield running
    running.stop()


def _address(shim: Pipeline) -> tuple[str, int]:
    port = int(shim.shim_url.rsplit(":", 1)[1])
    return "127.0.0.1", port


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, OSError):
        return False


def _dribble_until_closed(shim: Pipeline) -> float:
    """Sends a request head a byte every 0.1 s; returns when the server closed the connection."""
    started = time.monotonic()
    with socket.create_connection(_address(shim), timeout=5) as sock:
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"1" * 100:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        except OSError:  # the server closed it: the send fails
            return time.monotonic() - started
        assert _closed_by_server(sock, 1.0)
    return time.monotonic() - started


def test_slow_and_idle_heads_are_cut_off_while_healthz_answers_fast(
    shim: Pipeline, fault_report: FaultReport
) -> None:
    opened = time.monotonic()
    slow: list[socket.socket] = []
    try:
        for index in range(SLOW_SOCKETS):
            sock = socket.create_connection(_address(shim), timeout=5)
            if index % 3:  # a head begun and never finished; every third sends nothing at all
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        answers = []
        for _ in range(20):
            started = time.perf_counter()
            assert httpx.get(f"{shim.shim_url}/healthz", timeout=5).status_code == 200
            answers.append(time.perf_counter() - started)
        wait = HEAD_TIMEOUT + 2.0 - (time.monotonic() - opened)
        closed = sum(_closed_by_server(sock, max(0.2, wait)) for sock in slow)
        dribbled_for = _dribble_until_closed(shim)
    finally:
        for sock in slow:
            sock.close()
    assert max(answers) < 0.5, answers
    assert closed == SLOW_SOCKETS
    assert HEAD_TIMEOUT - 0.2 < dribbled_for < HEAD_TIMEOUT + 1.0  # a byte now and then buys no time
    fault_report.record(
        "5 bad input",
        faults_injected=SLOW_SOCKETS,
        slow_heads={"sockets": SLOW_SOCKETS, "closed": closed, "healthz_slowest_s": round(max(answers), 3)},
    )


def test_a_keep_alive_connection_keeps_working_within_the_head_timeout(shim: Pipeline) -> None:
    with httpx.Client(base_url=shim.shim_url, timeout=5) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(HEAD_TIMEOUT / 3)


def _series(shim: Pipeline) -> set[str]:
    text = httpx.get(f"{shim.shim_url}/metrics", timeout=5).text
    return {line.split(" ")[0] for line in text.splitlines() if line.startswith("okc_shim_requests_total")}


def test_odd_methods_add_no_metric_series(shim: Pipeline, fault_report: FaultReport) -> None:
    for index in range(3):  # the first of each kind makes its "other" series
        httpx.request(f"FOO{index}", f"{shim.shim_url}/healthz", timeout=5)
        httpx.request("GET", f"{shim.shim_url}/no/such/route/{index}", timeout=5)
    _series(shim)  # and reading /metrics makes its own
    before = _series(shim)
    for index in range(3, 53):
        httpx.request(f"FOO{index}", f"{shim.shim_url}/healthz", timeout=5)
        httpx.request("GET", f"{shim.shim_url}/no/such/route/{index}", timeout=5)
    after = _series(shim)
    assert after == before
    assert not any("FOO" in series for series in after)
    fault_report.record("5 bad input", faults_injected=100, odd_methods_new_series=len(after - before))


@pytest.mark.parametrize("spelling", ["%0A", "%0D%0A", "%20", "%09", "%00", "+"])
def test_a_token_with_whitespace_or_control_characters_is_refused(shim: Pipeline, spelling: str) -> None:
    created = httpx.post(
        f"{shim.shim_url}/v1/authorizations",
        json={"network": "LinkedIn", "ui": "redirect"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=15,
    )
    assert created.status_code == 201, created.text
    flow_id = created.json()["flow_id"]
    token = "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"
    answer = httpx.get(f"{shim.shim_url}/v1/callback/{flow_id}?okt={token}{spelling}", timeout=5)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_callback"


def test_no_request_forges_a_log_line(shim: Pipeline) -> None:
    forged = "2030-01-01 00:00:00,000 INFO api_shim.access [flow -] forged"
    httpx.get(f"{shim.shim_url}/v1/callback/x%0A{forged.replace(' ', '%20')}", timeout=5)
    httpx.get(f"{shim.shim_url}/v1/callback/abc?okt=x%0D%0A{forged.replace(' ', '%20')}", timeout=5)
    time.sleep(0.2)
    lines = shim.shim.output.splitlines()
    assert not any(re.match(r"^2030-01-01", line) for line in lines)
