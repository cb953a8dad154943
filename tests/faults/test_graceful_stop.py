"""Stopping processes the way deploys do: SIGTERM to a worker and to the shim, SIGSTOP to a worker.

A worker stopped with SIGTERM while it holds one flow mid-call (a slow Oktopost) and two more received and
not started hands all three back at once: another worker completes them within about a second, each
with exactly one terminal event, and the stopped worker exits 0 within its grace period plus 2 s. A
paused worker's flows, received ones included, are taken up within a quarter of the token's life. The
shim on SIGTERM ends an open event stream with a `retry:` hint and exits 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.faults.conftest import FaultReport
from tests.support.ledger import (
    NETWORKS,
    Ledger,
    TrackedFlow,
    epoch,
    sandbox_stats,
    start_stack,
)
from tests.support.processes import Process
from tests.support.stack import Pipeline, RedisServer, Sandbox
from worker.queueing.names import deliveries_queue, flows_queue

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.alone]

TOKEN_TTL = 20  # a working lease is 4 s, a queued one 10 s: a hand-back must beat both by far
GRACE_S = 2.0
SLOW_CALL_S = 8.0  # the call under way when the worker is told to stop: longer than the grace
HANDED_BACK_WITHIN_S = 1.5  # "within a second", and a loaded machine's scheduling
SLOW_STEP_1_S = 1.5  # Oktopost's answer to a flow's Step 1 while the shim is told to stop
FLOWS = 3  # one running (the worker has one thread), two received and waiting for it


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer) -> Iterator[tuple[Pipeline, Sandbox]]:
    with contextlib.ExitStack() as started:
        pipeline, sandbox = start_stack(
            started,
            redis_server.url,
            quickly=True,
            workers=0,
            token_ttl_seconds=TOKEN_TTL,
            oktopost_timeout_seconds=10,
            worker_shutdown_grace_seconds=GRACE_S,
        )
        started.callback(resume_paused, pipeline)
        yield pipeline, sandbox


def resume_paused(pipeline: Pipeline) -> None:
    """A paused worker resumed, so it can be stopped like the others."""
    for worker in pipeline.workers:
        if not worker.exited():
            os.killpg(worker.pid, signal.SIGCONT)


def start_prefetching_worker(pipeline: Pipeline) -> Process:
    """`celery -A worker worker` with one thread that receives FLOWS tasks ahead, as a worker with a
    larger prefetch multiplier (or ETA tasks in hand) does."""
    queues = f"{flows_queue(pipeline.prefix)},{deliveries_queue(pipeline.prefix)}"
    celery = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "threads", "-Q", queues]
    hostname = f"a-{uuid.uuid4().hex[:6]}@%h"  # %h: this machine's name
    worker = Process(
        [*celery, "--concurrency", "1", "--prefetch-multiplier", str(FLOWS), "--hostname", hostname],
        env=pipeline.env,
        name=hostname.split("@")[0],
    )
    pipeline.workers.append(worker)
    return worker


@pytest.fixture(scope="module")
def other(stack: tuple[Pipeline, Sandbox]) -> Process:
    """The worker that takes the flows up; paused while another takes them in hand."""
    pipeline, _ = stack
    worker = pipeline.start_worker(concurrency=4)
    ledger = Ledger(pipeline)
    try:
        wait_until(lambda: consuming(ledger) >= 1, 30, lambda: worker.tail())
    finally:
        ledger.close()
    return worker


def hold_flows(
    pipeline: Pipeline, sandbox: Sandbox, ledger: Ledger, other: Process
) -> tuple[Process, list[TrackedFlow]]:
    """A worker holding FLOWS profile flows: the first in a slow verify call, the others received.
    `other` is paused meanwhile, so that it takes none, and resumed."""
    os.killpg(other.pid, signal.SIGSTOP)
    try:
        worker, flows = _hold_flows(pipeline, sandbox, ledger)
    finally:
        os.killpg(other.pid, signal.SIGCONT)
    return worker, flows


def _hold_flows(pipeline: Pipeline, sandbox: Sandbox, ledger: Ledger) -> tuple[Process, list[TrackedFlow]]:
    worker = start_prefetching_worker(pipeline)
    wait_until(lambda: consuming(ledger, worker.name) >= 1, 30, lambda: worker.tail())
    flows = [ledger.start(NETWORKS[i % len(NETWORKS)]) for i in range(FLOWS)]
    for flow in flows:
        ledger.consent(flow)
    calls_before = sandbox_stats(sandbox)["v2_calls"]
    sandbox.set_faults(latency_ms=SLOW_CALL_S * 1000)
    for flow in flows:
        assert ledger.callback(flow).status_code == 303
    queue = flows_queue(pipeline.prefix)
    wait_until(lambda: sandbox_stats(sandbox)["v2_calls"] > calls_before, 10, lambda: worker.tail())
    wait_until(lambda: ledger.redis.llen(queue) == 0, 10, lambda: "the worker did not receive every task")
    time.sleep(0.3)  # its single thread is in the first call; the others wait in its hands
    assert sandbox_stats(sandbox)["v2_calls"] == calls_before + 1
    sandbox.set_faults(latency_ms=0)
    return worker, flows


def test_a_worker_told_to_stop_hands_back_its_flows_at_once_and_exits_0_in_time(
    stack: tuple[Pipeline, Sandbox], other: Process, fault_report: FaultReport
) -> None:
    pipeline, sandbox = stack
    ledger = Ledger(pipeline)
    try:
        stopped, flows = hold_flows(pipeline, sandbox, ledger, other)
        wait_until(lambda: consuming(ledger) >= 2, 10, lambda: other.tail())
        told_at = redis_time(ledger)
        os.kill(stopped.pid, signal.SIGTERM)
        began = time.monotonic()
        events = ledger.outcomes(flows, timeout=TOKEN_TTL)
        wait_until(stopped.exited, GRACE_S + 5, lambda: stopped.tail())
        took = time.monotonic() - began
        code = stopped.popen.wait(1)
        tally = ledger.tally(events)
        taken_up = sorted(epoch(flow_events[-1]["at"]) - told_at for flow_events in events.values())
        fault_report.record(
            "10 graceful stop",
            **tally.figures(),
            faults_injected=1,
            server_errors=ledger.server_errors,
            completed_after_sigterm_s=[round(t, 2) for t in taken_up],
            exited_after_s=round(took, 2),
            grace_s=GRACE_S,
        )
    finally:
        ledger.close()

    assert tally.lost == [], (tally, stopped.tail(30))
    assert tally.duplicated == [], tally
    assert tally.by_outcome == {"connection.completed": FLOWS}, (tally.by_outcome, stopped.tail(30))
    assert taken_up[-1] <= HANDED_BACK_WITHIN_S, (taken_up, stopped.tail(30))
    assert code == 0, stopped.tail(30)
    assert took <= GRACE_S + 2, took


def test_a_paused_worker_s_received_flows_are_taken_up_within_a_quarter_of_the_token_s_life(
    stack: tuple[Pipeline, Sandbox], other: Process, fault_report: FaultReport
) -> None:
    pipeline, sandbox = stack
    ledger = Ledger(pipeline)
    try:
        paused, flows = hold_flows(pipeline, sandbox, ledger, other)
        os.killpg(paused.pid, signal.SIGSTOP)
        paused_at = redis_time(ledger)
        events = ledger.outcomes(flows, timeout=TOKEN_TTL)
        os.killpg(paused.pid, signal.SIGCONT)
        tally = ledger.tally(events)
        taken_up = sorted(epoch(flow_events[-1]["at"]) - paused_at for flow_events in events.values())
        fault_report.record(
            "8 paused worker",
            **tally.figures(),
            faults_injected=1,
            server_errors=ledger.server_errors,
            received_taken_up_after_pause_s=[round(t, 2) for t in taken_up],
        )
    finally:
        ledger.close()

    assert tally.lost == [], tally
    assert tally.duplicated == [], tally
    assert tally.by_outcome == {"connection.completed": FLOWS}, tally.by_outcome
    assert taken_up[-1] <= TOKEN_TTL / 4 + 1.5, taken_up  # a received task's queued lease is TOKEN_TTL / 2


def test_the_shim_told_to_stop_answers_what_is_under_way_ends_event_streams_with_retry_and_exits_0(
    stack: tuple[Pipeline, Sandbox],
) -> None:
    pipeline, sandbox = stack
    ledger = Ledger(pipeline)
    under_way: list[httpx.Response] = []
    try:
        flow = ledger.start()  # waits for its callback: its stream stays open
        sandbox.set_faults(latency_ms=SLOW_STEP_1_S * 1000)
        started = threading.Thread(target=lambda: under_way.append(start_flow(pipeline)), daemon=True)
        lines: list[str] = []
        with httpx.stream(
            "GET", f"{pipeline.shim_url}/v1/authorizations/{flow.flow_id}/events", headers=pipeline.headers
        ) as stream:
            assert stream.status_code == 200
            read = stream.iter_lines()
            while "event: authorization.started" not in lines:
                lines.append(next(read))
            started.start()
            time.sleep(SLOW_STEP_1_S / 3)  # the new flow's Step 1 is under way at Oktopost
            os.kill(pipeline.shim.pid, signal.SIGTERM)
            began = time.monotonic()
            lines += list(read)  # until the shim ends the stream
        started.join(10)
        wait_until(pipeline.shim.exited, 10, lambda: pipeline.shim.tail())
        took = time.monotonic() - began
    finally:
        sandbox.set_faults(latency_ms=0)
        ledger.close()

    assert any(line.startswith("retry:") for line in lines), lines
    assert [answer.status_code for answer in under_way] == [201], [a.text for a in under_way]
    assert pipeline.shim.popen.wait(1) == 0, pipeline.shim.tail()
    assert took < 5, took


def start_flow(pipeline: Pipeline) -> httpx.Response:
    body = {"network": "LinkedIn", "return_url": "https://app.example/done"}
    url = f"{pipeline.shim_url}/v1/authorizations"
    return httpx.post(url, json=body, headers=pipeline.headers, timeout=10)


def consuming(ledger: Ledger, name: str = "") -> int:
    """The workers (whose node name starts with `name`) marked consuming in the last 3 s."""
    fresh_since = redis_time(ledger) - 3
    marks = ledger.redis.zrangebyscore(ledger.names.workers, fresh_since, "+inf")
    return sum(mark.decode().startswith(name) for mark in marks)


def redis_time(ledger: Ledger) -> float:
    seconds, microseconds = ledger.redis.time()
    return float(seconds) + microseconds / 1_000_000


def wait_until(condition: Callable[[], object], timeout: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, why()
        time.sleep(0.05)
