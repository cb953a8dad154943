"""Guarantees held against real processes where a dead receiver or a paused account used to break them:
a webhook endpoint that never answers beside hundreds of pending deliveries leaves the worker's CPU and
the flows' latency as they were once each delivery's first look is over, and a pause with hundreds of
flows abandoned before their callback still ends the paused account's live flows at once, with their
reason.

One stack for the module (a sandbox, a shim, one worker); figures in CPU seconds and counts, with
margins, so a loaded machine does not decide the outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.fault_report import FaultReport
from tests.support.ledger import ENTITY_KINDS, Ledger, epoch, start_stack
from tests.support.stack import Pipeline, RedisServer, Sandbox
from worker.keys import RedisNames

pytestmark = [pytest.mark.faults, pytest.mark.integration]

PART = "9 held guarantees"
WEBHOOK_TIMEOUT = 1
PENDING = 300  # each delivery's first look is a task run: a thousand take half a minute on a busy machine
WINDOW = 3.0  # seconds of worker CPU compared
TOKEN_TTL = 60
FLOW_TTL = 40  # flows abandoned before their callback end before the live flows' tokens do
ABANDONED = 300


class HangingReceiver:
    """A webhook endpoint that accepts every connection and never answers; counts the connections."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            self._held.append(connection)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for connection in self._held:
            connection.close()
        self.listener.close()


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer) -> Iterator[tuple[Pipeline, Sandbox]]:
    with contextlib.ExitStack() as started:
        pipeline, sandbox = start_stack(
            started,
            redis_server.url,
            quickly=True,
            workers=0,
            token_ttl_seconds=TOKEN_TTL,
            flow_ttl_seconds=FLOW_TTL,
            webhook_allowed_hosts="127.0.0.1",
            webhook_timeout_seconds=WEBHOOK_TIMEOUT,
        )
        pipeline.start_worker(concurrency=8)
        yield pipeline, sandbox


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and every process below it, so far."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    family = {pid}
    grew = True
    while grew:
        below = {child for child, parent in parents.items() if parent in family} - family
        grew = bool(below)
        family |= below
    return sum(times.get(member, 0.0) for member in family)


def cpu_over(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def flow_latencies(pipeline: Pipeline, count: int) -> list[float]:
    """Seconds from callback to connection.completed (the events' own times) for `count` profile flows."""
    ledger = Ledger(pipeline)
    try:
        flows = [ledger.start("LinkedIn") for _ in range(count)]
        for flow in flows:
            ledger.callback(flow)
        ledger.wait_for(flows, "connection.completed", timeout=30)
        latencies = []
        for events in ledger.events(flows).values():
            at = {event["type"]: epoch(event["at"]) for event in events}
            latencies.append(at["connection.completed"] - at["callback.received"])
        return latencies
    finally:
        ledger.close()


def append_events(pipeline: Pipeline, count: int) -> None:
    """`count` events of the default tenant on the all-flows stream, as flows' transitions append them."""
    client: Any = pipeline.redis()
    stream = RedisNames(pipeline.prefix).all_events_stream
    with client.pipeline(transaction=False) as pipe:
        for _ in range(count):
            event = {
                "v": 1,
                "id": str(uuid.uuid4()),
                "type": "authorization.started",
                "flow_id": uuid.uuid4().hex,
                "tenant": "default",
                "at": "2026-12-06T00:00:00.000Z",
            }
            pipe.xadd(stream, {"event": json.dumps(event)})
        pipe.execute()
    client.close()


def wait_for_empty(pipeline: Pipeline, queue: str, timeout: float) -> None:
    client: Any = pipeline.redis()
    deadline = time.monotonic() + timeout
    try:
        while client.llen(queue):
            assert time.monotonic() < deadline, f"{client.llen(queue)} tasks still queued"
            time.sleep(0.2)
    finally:
        client.close()


def pending_deliveries(pipeline: Pipeline) -> int:
    client: Any = pipeline.redis()
    count = int(client.zcard(RedisNames(pipeline.prefix).webhook_pending))
    client.close()
    return count


def test_an_endpoint_that_never_answers_beside_hundreds_of_deliveries_costs_the_worker_nothing(
    stack: tuple[Pipeline, Sandbox], fault_report: FaultReport
) -> None:
    pipeline, _ = stack
    worker = pipeline.workers[0]
    before = flow_latencies(pipeline, 2)  # warm: the worker's clients and pools exist
    idle_cpu = cpu_over(worker.pid, WINDOW)
    receiver = HangingReceiver()
    try:
        answer = httpx.post(
            f"{pipeline.shim_url}/v1/webhooks",
            json={"url": f"http://127.0.0.1:{receiver.port}/hook"},
            headers=pipeline.headers,
        )
        assert answer.status_code == 201, answer.text
        time.sleep(0.01)
        append_events(pipeline, PENDING)
        deadline = time.monotonic() + 30
        while pending_deliveries(pipeline) < PENDING:  # the dispatcher made every delivery
            assert time.monotonic() < deadline, pending_deliveries(pipeline)
            time.sleep(0.2)
        wait_for_empty(pipeline, f"{pipeline.prefix}.oktopost-connect.webhooks", 60)  # every first look
        time.sleep(WEBHOOK_TIMEOUT)
        accepted_before = receiver.accepted
        backlog_cpu = cpu_over(worker.pid, WINDOW)
        attempts = receiver.accepted - accepted_before
        during = flow_latencies(pipeline, 2)
        still_pending = pending_deliveries(pipeline)
    finally:
        receiver.close()
    fault_report.record(
        PART,
        worker_cpu_idle_s=round(idle_cpu, 2),
        worker_cpu_beside_dead_endpoint_s=round(backlog_cpu, 2),
        attempts_to_dead_endpoint_in_window=attempts,
        flow_latency_before_s=round(max(before), 2),
        flow_latency_beside_dead_endpoint_s=round(max(during), 2),
        pending_deliveries=still_pending,
    )
    # one look per turn: 4 attempts per timeout at most, not one task per delivery per second
    assert attempts <= 4 * (WINDOW / WEBHOOK_TIMEOUT + 2)
    assert backlog_cpu < idle_cpu + 0.25 * WINDOW, (idle_cpu, backlog_cpu)
    assert max(during) < max(before) + 2.0, (before, during)
    assert still_pending >= PENDING  # nothing given up on in so short a time


def test_a_pause_with_hundreds_of_abandoned_flows_ends_the_live_flows_at_once_with_the_reason(
    stack: tuple[Pipeline, Sandbox], fault_report: FaultReport
) -> None:
    pipeline, sandbox = stack
    ledger = Ledger(pipeline)
    pause_key = RedisNames(pipeline.prefix).account("demo-account").account_pause
    client: Any = pipeline.redis()
    try:
        with ThreadPoolExecutor(16) as pool:  # abandoned before their callback: their deadlines come first
            list(pool.map(lambda _: ledger.start("LinkedIn", return_url=None), range(ABANDONED)))
        live = [ledger.start(network, kind) for network, kind in ENTITY_KINDS[:3]]
        for flow in live:
            ledger.callback(flow)
        ledger.offers(live, timeout=30)  # awaiting their selection: no task holds them
        sandbox.set_faults(throttle_rate=1.0, retry_after_s=600)
        refused = httpx.post(
            f"{pipeline.shim_url}/v1/authorizations",
            json={"network": "LinkedIn", "type": "profile"},
            headers=pipeline.headers,
            timeout=15,
        )
        assert refused.status_code == 503, refused.text  # Oktopost's 429 paused the account
        paused_at = time.monotonic()
        ended = ledger.wait_for(live, "authorization.expired", timeout=10)
        took = time.monotonic() - paused_at
    finally:
        sandbox.set_faults(throttle_rate=0.0)
        client.delete(pause_key)  # the module's other scenario may run after this one
        client.close()
        ledger.close()
    fault_report.record(
        PART,
        abandoned_flows=ABANDONED,
        live_flows_ended_blocked=sum(
            event["data"].get("reason") == "upstream_blocked" for event in ended.values()
        ),
        seconds_to_end_live_flows=round(took, 2),
    )
    for event in ended.values():
        assert event["data"] == {"stage": "selection", "reason": "upstream_blocked"}, event
    assert took < 5.0  # at once: a sweep or two, not the tokens' 60 s
