"""A worker paused (SIGSTOP) while its verify calls are in flight, as a GC or VM pause would.

Its leases lapse and another worker takes the flows up within a quarter of TOKEN_TTL_SECONDS, offers the
selections and completes them. The paused worker resumes while those completions are in flight, and the
refusals waiting in its sockets change nothing: each flow completes, once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import pytest

from tests.support.fault_report import FaultReport
from tests.support.ledger import ENTITY_KINDS, FaultStack, Ledger, epoch, sandbox_stats, wait_until
from tests.support.processes import Process
from tests.support.stack import Pipeline, Sandbox

# taken up within a quarter of the token's lifetime, timed
pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.alone]

TOKEN_TTL = 24  # the lease, 0.8 of a quarter of it, is 4.8 s
LATENCY_S = 1.5  # the refusals are decided this long after the calls arrive, the worker paused by then
FLOWS = 5  # the paused worker's concurrency too: it holds every flow and waits for no further task
TAKEN_UP_SLACK_S = 1.5  # a busy machine's scheduling, as for a killed worker
LET_GO = "was taken up by another task"  # what a worker logs when it lets go of a flow it lost
STACK = FaultStack({"token_ttl_seconds": TOKEN_TTL, "oktopost_timeout_seconds": 5})


@pytest.fixture
def paused() -> Iterator[Callable[[Process, signal.Signals], None]]:
    """Sends SIGSTOP/SIGCONT to a worker's process group; a group still stopped is resumed on the way out,
    so that it can be stopped like any other."""
    stopped: list[Process] = []

    def send(worker: Process, signum: signal.Signals) -> None:
        os.killpg(worker.pid, signum)
        if signum is signal.SIGSTOP:
            stopped.append(worker)
        elif worker in stopped:
            stopped.remove(worker)

    yield send
    for worker in stopped:
        if worker.popen.returncode is None:
            os.killpg(worker.pid, signal.SIGCONT)


def test_a_paused_worker_that_resumes_with_a_refusal_changes_nothing(
    stack: tuple[Pipeline, Sandbox],
    paused: Callable[[Process, signal.Signals], None],
    fault_report: FaultReport,
) -> None:
    pipeline, sandbox = stack
    ledger = Ledger(pipeline)
    try:
        first = pipeline.start_worker(concurrency=FLOWS)
        flows = [ledger.start(network, kind) for network, kind in ENTITY_KINDS[:FLOWS]]
        for flow in flows:
            ledger.consent(flow)

        sandbox.set_faults(latency_ms=LATENCY_S * 1000, reject_rate=1.0)
        _call_and_wait(sandbox, lambda: [ledger.callback(flow) for flow in flows], first)
        paused(first, signal.SIGSTOP)
        paused_at = _redis_time(ledger)
        refused = wait_until(lambda: sandbox_stats(sandbox)["faults"]["reject"] >= FLOWS, 10)
        assert refused, sandbox_stats(sandbox)
        sandbox.set_faults(latency_ms=0, reject_rate=0)  # every refusal is in the paused worker's sockets

        second = pipeline.start_worker(concurrency=FLOWS)
        offers = ledger.wait_for(flows, "selection.required", timeout=TOKEN_TTL / 2)
        taken_up = [epoch(offer["at"]) - paused_at for offer in offers.values()]
        # the user picks pages; the second worker's completions are in flight when the first resumes
        sandbox.set_faults(latency_ms=LATENCY_S * 1000)
        picks = [(flow, offers[flow.flow_id]["data"]["entities"][1]["id"]) for flow in flows]
        _call_and_wait(sandbox, lambda: [ledger.select(flow, [pick]) for flow, pick in picks], second)
        states = {flow.flow_id: _state(ledger, flow.flow_id) for flow in flows}
        paused(first, signal.SIGCONT)
        said = wait_until(lambda: all(_let_go(first, flow.flow_id) for flow in flows), 10)
        events = ledger.outcomes(flows, timeout=TOKEN_TTL / 2)
        sandbox.set_faults(latency_ms=0)
        tally = ledger.tally(events)
        connections = {c["Id"] for c in sandbox.connections()}
        fault_report.record(
            "8 paused worker",
            **tally.figures(),
            faults_injected=FLOWS + 1,  # a refusal per flow, and the pause
            server_errors=ledger.server_errors,
            wrong_outcome=sum(not e or e[-1]["type"] != "connection.completed" for e in events.values()),
            taken_up_after_pause_s=round(max(taken_up), 2),
            quarter_of_token_ttl_s=TOKEN_TTL / 4,
            refusals_dropped_on_resume=sum(bool(_let_go(first, flow.flow_id)) for flow in flows),
        )
    finally:
        ledger.close()

    assert set(states.values()) == {"completing"}, states  # the refusals came back mid-completion
    assert tally.lost == [], tally
    assert tally.duplicated == [], tally
    assert tally.by_outcome == {"connection.completed": FLOWS}, (tally.by_outcome, first.tail())
    for flow_events in events.values():
        assert all(credential["id"] in connections for credential in flow_events[-1]["data"]["credentials"])
    assert said, [(flow.flow_id, _let_go(first, flow.flow_id)) for flow in flows]
    assert max(taken_up) <= TOKEN_TTL / 4 + TAKEN_UP_SLACK_S, sorted(taken_up)
    assert ledger.server_errors == 0


def _call_and_wait(sandbox: Sandbox, send: Callable[[], object], worker: Process) -> None:
    """Sends the requests that make `worker` call the sandbox once a flow; returns once every call arrived."""
    before = sandbox_stats(sandbox)["v2_calls"]
    send()
    arrived = wait_until(lambda: sandbox_stats(sandbox)["v2_calls"] - before >= FLOWS, 30)
    assert arrived, f"the worker did not call the sandbox for every flow\n{worker.tail()}"


def _state(ledger: Ledger, flow_id: str) -> str:
    return str(ledger.redis.hget(ledger.names.flow_state(flow_id), "state").decode())


def _let_go(worker: Process, flow_id: str) -> str:
    """The worker's log line saying the flow was taken up by another task, or ""."""
    lines = worker.output.splitlines()
    return next((line for line in lines if flow_id in line and LET_GO in line), "")


def _redis_time(ledger: Ledger) -> float:
    seconds, microseconds = ledger.redis.time()
    return float(seconds) + microseconds / 1_000_000
