"""One tenant against the shim, the other tenant watching: slow request bodies, floods of event streams,
of webhook endpoints and of pending webhook deliveries, and a Redis that refuses writes. Real processes
(a shim with a small --limit-concurrency, a private redis-server, the sandbox; for the deliveries a
worker and a receiver); each test records what held, for how long, and what the other tenant saw."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support.fault_report import FaultReport
from tests.support.flows import callback, consent
from tests.support.processes import Process, free_port, start_cli, wait_for_http
from tests.support.receivers import Receiver, run_flows, wait_until, webhook_stack
from tests.support.stack import (
    API_KEY,
    Pipeline,
    RedisServer,
    Sandbox,
    pipeline_env,
    start_redis,
    stop_redis,
)
from worker.keys import RedisNames

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(90)]

MALLORY_KEY = "mallory-caller-key-0123456789abcdef"
LIMIT_CONCURRENCY = 100
BODY_TIMEOUT = 1.5
SSE_PER_FLOW = 5
MAX_ENDPOINTS = 5
PART = "5 bad input"
SLOW_BODIES = 120  # each of keyed and keyless: together well past --limit-concurrency
MAX_PENDING = 20  # the flooding tenant's pending deliveries: its flows want ten times as many
FLOOD_FLOWS = 10


@dataclass
class Stack:
    url: str
    port: int
    redis: redis.Redis
    shim: Process

    def redis_clients(self) -> int:
        info: dict[str, Any] = self.redis.info("clients")  # type: ignore[assignment]
        return int(info["connected_clients"])

    def used_memory(self) -> int:
        info: dict[str, Any] = self.redis.info("memory")  # type: ignore[assignment]
        return int(info["used_memory"])

    def post_flow(self, key: str = API_KEY) -> httpx.Response:
        body = {"network": "LinkedIn", "ui": "redirect", "return_url": "https://app.example/done"}
        return httpx.post(f"{self.url}/v1/authorizations", json=body, headers=_bearer(key), timeout=10)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _tenants_file(directory: Path, sandbox: Sandbox) -> Path:
    """The second tenant, mallory, on the sandbox's account (the default tenant is the other one)."""
    tenants = directory / "tenants.toml"
    tenants.write_text(
        "[tenants.mallory]\n"
        f'api_keys = ["{MALLORY_KEY}"]\n'
        'allowed_return_urls = ["https://app.example"]\n'
        f'oktopost = {{ account_id = "demo-account", api_key = "demo-key", base_url = "{sandbox.url}", '
        'rate_limit = "100000/second" }\n'
    )
    return tenants


@pytest.fixture(scope="module")
def stack(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with contextlib.ExitStack() as started:  # every process stopped, also when one fails to start
        server: RedisServer = start_redis()  # its own: one test fills it up
        started.callback(stop_redis, server)
        tenants = _tenants_file(tmp_path_factory.mktemp("tenants"), sandbox)
        port = free_port()
        env = pipeline_env(
            server.url,
            sandbox.url,
            port,
            tenants_file=tenants,
            shim_body_timeout_seconds=BODY_TIMEOUT,
            sse_max_per_flow=SSE_PER_FLOW,
            webhook_max_endpoints=MAX_ENDPOINTS,
            log_level="INFO",
        )
        shim = start_cli(
            ["shim", "--port", str(port), "--limit-concurrency", str(LIMIT_CONCURRENCY)], env=env, name="shim"
        )
        started.callback(shim.stop)
        wait_for_http(f"http://127.0.0.1:{port}/healthz", shim)
        yield Stack(f"http://127.0.0.1:{port}", port, server.client(), shim)


def _slow_body(stack: Stack, key: str | None) -> socket.socket:
    """A POST that announces 60000 bytes of body and sends ten."""
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=5)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST /v1/authorizations HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        "Content-Length: 60000\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"network"')
    return sock


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (after its answer, if any)."""
    sock.settimeout(0.01)
    try:
        while chunk := sock.recv(65536):
            del chunk
        return True
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


def _timed(request: httpx.Request) -> tuple[int, float]:
    started = time.perf_counter()
    with httpx.Client(timeout=10) as client:
        status = client.send(request).status_code
    return status, time.perf_counter() - started


def test_slow_bodies_neither_starve_callbacks_nor_the_other_tenant(
    stack: Stack, fault_report: FaultReport
) -> None:
    flow = stack.post_flow().json()
    callback = httpx.Request("GET", f"{stack.url}/v1/callback/{flow['flow_id']}?error=access_denied")
    keyed = [_slow_body(stack, MALLORY_KEY) for _ in range(SLOW_BODIES)]
    keyless = [_slow_body(stack, None) for _ in range(SLOW_BODIES)]
    flooded = time.monotonic()
    try:
        time.sleep(0.5)  # the server has read every head by now
        for sock in keyed:  # a byte more now and then buys no time
            sock.sendall(b" ")
        healthz = [_timed(httpx.Request("GET", f"{stack.url}/healthz")) for _ in range(10)]
        created = _timed(
            httpx.Request(
                "POST",
                f"{stack.url}/v1/authorizations",
                headers=_bearer(API_KEY),
                json={"network": "LinkedIn"},
            )
        )
        denied = _timed(callback)
        keyless_closed = sum(_closed(sock) for sock in keyless)
        time.sleep(max(0.0, BODY_TIMEOUT + 1.0 - (time.monotonic() - flooded)))
        keyed_closed = sum(_closed(sock) for sock in keyed)
        held_for = time.monotonic() - flooded
    finally:
        for sock in keyed + keyless:
            sock.close()
    assert [status for status, _ in healthz] == [200] * 10, healthz
    assert created[0] == 201, created
    assert denied[0] == 303, denied  # the callback was served, and the flow was ended by it
    assert keyless_closed == SLOW_BODIES  # refused (401) before a byte of their bodies was read
    assert keyed_closed == SLOW_BODIES  # 408 after the body timeout, or 503 at once past the bodies cap
    fault_report.record(
        PART,
        faults_injected=2 * SLOW_BODIES,
        slow_bodies={
            "connections": 2 * SLOW_BODIES,
            "limit_concurrency": LIMIT_CONCURRENCY,
            "keyless_closed_at_once": keyless_closed,
            "keyed_closed_within_s": round(held_for, 2),
            "other_tenant_post_s": round(created[1], 3),
            "callback_s": round(denied[1], 3),
            "healthz_slowest_s": round(max(seconds for _, seconds in healthz), 3),
        },
    )


def _open_stream(stack: Stack, flow_id: str, key: str) -> tuple[socket.socket, int]:
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=5)
    head = (
        f"GET /v1/authorizations/{flow_id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
    )
    sock.sendall(head.encode())
    status_line = sock.recv(65536).split(b"\r\n", 1)[0]
    return sock, int(status_line.split()[1])


def test_an_event_stream_flood_is_capped_and_the_other_tenant_streams(
    stack: Stack, fault_report: FaultReport
) -> None:
    theirs = stack.post_flow(MALLORY_KEY).json()["flow_id"]
    clients_before = stack.redis_clients()
    opened = [_open_stream(stack, theirs, MALLORY_KEY) for _ in range(30)]
    try:
        statuses = [status for _, status in opened]
        clients_during = stack.redis_clients()
        mine = stack.post_flow().json()["flow_id"]
        with httpx.stream(
            "GET", f"{stack.url}/v1/authorizations/{mine}/events", headers=_bearer(API_KEY), timeout=5
        ) as answer:
            other_status = answer.status_code
            first = next(answer.iter_lines())
    finally:
        for sock, _ in opened:
            sock.close()
    time.sleep(1.5)  # the streams notice their clients left
    clients_after = stack.redis_clients()
    assert statuses.count(200) == SSE_PER_FLOW
    assert statuses.count(429) == 30 - SSE_PER_FLOW
    assert other_status == 200
    assert first.startswith(("id:", ":", "event:"))
    assert clients_during - clients_before <= 4  # one shared subscription, a command or two
    fault_report.record(
        PART,
        faults_injected=30,
        sse_flood={
            "streams_asked": 30,
            "admitted": statuses.count(200),
            "refused_429": statuses.count(429),
            "redis_clients": [clients_before, clients_during, clients_after],
            "other_tenant_stream": other_status,
        },
    )


def test_an_endpoint_flood_is_capped_and_the_other_tenant_registers(
    stack: Stack, fault_report: FaultReport
) -> None:
    url = f"{stack.url}/v1/webhooks"
    body = {"url": "https://93.184.215.14/hooks"}
    statuses = [
        httpx.post(url, json=body, headers=_bearer(MALLORY_KEY), timeout=10).status_code for _ in range(30)
    ]
    other = httpx.post(url, json=body, headers=_bearer(API_KEY), timeout=10)
    assert statuses == [201] * MAX_ENDPOINTS + [422] * (30 - MAX_ENDPOINTS)
    assert other.status_code == 201
    fault_report.record(
        PART,
        faults_injected=30,
        endpoint_flood={
            "asked": 30,
            "created": MAX_ENDPOINTS,
            "refused_422": 30 - MAX_ENDPOINTS,
            "other_tenant": 201,
        },
    )


@pytest.fixture(scope="module")
def delivering(
    redis_server: RedisServer, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Pipeline, Receiver]]:
    """A shim and a worker (two tenants, WEBHOOK_MAX_PENDING small) and a webhook receiver."""
    with webhook_stack(
        redis_server.url,
        sandbox.url,
        workers=1,
        tenants_file=_tenants_file(tmp_path_factory.mktemp("tenants"), sandbox),
        webhook_retry_schedule=",".join(["3s"] * 20),  # a minute of refusals before any fails
        webhook_max_endpoints=MAX_ENDPOINTS,
        webhook_max_pending=MAX_PENDING,
        log_level="INFO",
    ) as started:
        yield started


def _mallory_flow(pipeline: Pipeline) -> None:
    body = {"network": "LinkedIn", "ui": "redirect", "return_url": "https://app.example/done"}
    created = httpx.post(
        f"{pipeline.shim_url}/v1/authorizations", json=body, headers=_bearer(MALLORY_KEY), timeout=10
    )
    assert created.status_code == 201, created.text
    assert callback(consent(created.json()["redirect_url"])).status_code == 303


def _events_of_tenant(client: redis.Redis, names: RedisNames, tenant: str) -> list[dict[str, Any]]:
    entries: Any = client.xrange(names.all_events_stream)
    events = [json.loads(fields[b"event"]) for _, fields in entries]
    return [event for event in events if event.get("tenant", "default") == tenant]


def _accepted_ids(receiver: Receiver, path: str) -> set[str]:
    return {str(item["id"]) for item in receiver.report(path)["accepted"]}


@pytest.mark.timeout(240)
def test_a_pending_delivery_flood_is_held_back_losing_nothing_and_the_other_tenant_is_delivered_promptly(
    delivering: tuple[Pipeline, Receiver], fault_report: FaultReport
) -> None:
    pipeline, receiver = delivering
    client: Any = pipeline.redis()
    names = RedisNames(pipeline.prefix)
    paths = [f"/mallory{n}" for n in range(MAX_ENDPOINTS)]
    secrets = {}
    for path in paths:  # every endpoint of the flooding tenant refuses: its deliveries stay pending
        answer = httpx.post(
            f"{pipeline.shim_url}/v1/webhooks",
            json={"url": f"{receiver.url}{path}"},
            headers=_bearer(MALLORY_KEY),
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        secrets[path] = answer.json()["secret"]
        receiver.control(path, secret=secrets[path], mode="503")
    other = httpx.post(
        f"{pipeline.shim_url}/v1/webhooks", json={"url": f"{receiver.url}/other"}, headers=pipeline.headers
    )
    assert other.status_code == 201, other.text
    receiver.control("/other", secret=other.json()["secret"])

    for _ in range(FLOOD_FLOWS):
        _mallory_flow(pipeline)
    wait_until(lambda: client.hexists(names.webhook_behind, "mallory"), 30, "the flood held back at the cap")
    held_from = time.monotonic()
    peak = 0

    def other_delivered(flows: list[str]) -> bool:
        nonlocal peak
        peak = max(peak, int(client.zcard(names.webhook_tenant_pending("mallory"))))
        bodies = [json.loads(item["body"]) for item in receiver.report("/other")["accepted"]]
        return (
            sum(body["type"] == "connection.completed" and body["flow_id"] in flows for body in bodies) == 3
        )

    started = time.monotonic()
    flows = run_flows(pipeline, 3)  # the other tenant, while the flood is held back
    wait_until(lambda: other_delivered(flows), 30, "the other tenant's deliveries")
    other_seconds = time.monotonic() - started
    assert client.hexists(names.webhook_behind, "mallory"), "the flood was still held back meanwhile"
    assert peak <= MAX_PENDING

    def flood_over() -> bool:
        events = _events_of_tenant(client, names, "mallory")
        return sum(event["type"] == "connection.completed" for event in events) == FLOOD_FLOWS

    wait_until(flood_over, 60, "the flooding tenant's flows completed")
    wanted = {str(event["id"]) for event in _events_of_tenant(client, names, "mallory")}
    assert len(wanted) * MAX_ENDPOINTS > 5 * MAX_PENDING  # a flood: many times the cap
    drained_at = time.monotonic()
    for path in paths:  # the receiver drains
        receiver.control(path, secret=secrets[path], mode="ok")
    wait_until(
        lambda: all(_accepted_ids(receiver, path) >= wanted for path in paths), 120, "the flood delivered"
    )
    drain_seconds = time.monotonic() - drained_at
    missing = sum(len(wanted - _accepted_ids(receiver, path)) for path in paths)
    wait_until(lambda: not client.hexists(names.webhook_behind, "mallory"), 10, "the flood caught up")
    assert missing == 0
    assert int(client.zcard(names.webhook_tenant_pending("mallory"))) == 0
    fault_report.record(
        PART,
        flows=FLOOD_FLOWS + 3,
        faults_injected=FLOOD_FLOWS,
        lost=missing,
        pending_flood={
            "deliveries_wanted": len(wanted) * MAX_ENDPOINTS,
            "max_pending": MAX_PENDING,
            "peak_pending": peak,
            "held_back_seconds": round(drained_at - held_from, 1),
            "other_tenant_delivered_seconds": round(other_seconds, 1),
            "drained_seconds": round(drain_seconds, 1),
        },
    )


def test_a_full_redis_is_a_503_with_retry_after_for_the_other_tenant_never_a_500(
    stack: Stack, fault_report: FaultReport
) -> None:
    flow_id = stack.post_flow().json()["flow_id"]
    used = stack.used_memory()
    stack.redis.config_set("maxmemory-policy", "noeviction")
    stack.redis.config_set("maxmemory", str(used // 2))  # full: every write refused with OOM
    try:
        created = stack.post_flow()
        token = "591c6053d81978.1157844686727965"
        callback = httpx.get(f"{stack.url}/v1/callback/{flow_id}?okt={token}", timeout=10)
    finally:
        stack.redis.config_set("maxmemory", "0")
    for answer in (created, callback):
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"].isdigit()
        assert answer.json()["error"]["code"] == "unavailable"
    assert stack.post_flow().status_code == 201  # room again: served again
    fault_report.record(PART, faults_injected=2, redis_full={"post": 503, "callback": 503, "after": 201})
