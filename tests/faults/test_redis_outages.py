"""Redis outages the shim and worker must ride out without a restart.

- Redis stops answering without closing its connections (SIGSTOP: a stalled host, a partition). Harder
  than a Redis that is down, where connections are refused at once: every command waits for an answer
  that does not come. The shim still answers within a couple of seconds, with a JSON 503, and /readyz
  fails; when Redis answers again the same processes carry on.
- Redis turns into a replica for a while (REPLICAOF: a managed Redis demoting its primary, an operator's
  slip): the worker's wait for tasks is cut off with "UNBLOCKED" and every write refused as read-only.
  The worker reconnects rather than exiting, and flows called back once Redis is a primary again complete.
- Redis restarts (AOF on) while flows are mid-verification: their upstream calls are in flight when it
  goes and answer while it is away, so the worker has outcomes it cannot record yet. The same worker
  process reconnects and the lease sweeper hands those flows to another attempt: every flow completes
  exactly once, and the upstream saw each verification once or, for a flow taken up again, twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis

from tests.support.fault_report import FaultReport
from tests.support.ledger import NETWORKS, Ledger, epoch, sandbox_stats, start_stack
from tests.support.redis_outage import RestartableRedis, ShimRequest, timed_answers
from tests.support.stack import Pipeline, Sandbox

pytestmark = [pytest.mark.faults, pytest.mark.integration]

AOF = ["--appendonly", "yes", "--appendfsync", "always"]
ANSWER_WITHIN_S = 2.0
STALL_S = 3.0
LATENCY_S = 1.0
DOWN_S = 2.0
DEMOTED_S = 3.0
FLOWS = 6
TOKEN_TTL = 20  # a lease of 4 s: a flow whose outcome was lost is taken up again 4 s after its call began


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Pipeline, Sandbox, RestartableRedis]]:
    with contextlib.ExitStack() as started:
        server = RestartableRedis(AOF)
        started.callback(server.stop)
        pipeline, sandbox = start_stack(
            started, server.url, token_ttl_seconds=TOKEN_TTL, oktopost_timeout_seconds=2
        )
        yield pipeline, sandbox, server


def test_a_stalled_redis_gets_quick_json_503s_and_everything_carries_on_after(
    stack: tuple[Pipeline, Sandbox, RestartableRedis], fault_report: FaultReport
) -> None:
    pipeline, _, restartable = stack
    server = restartable.server
    assert server.process is not None
    ledger = Ledger(pipeline)
    before = [ledger.start(), ledger.start("Twitter")]
    for flow in before:
        ledger.consent(flow)
    processes = [pipeline.shim, *pipeline.workers]

    os.kill(server.process.pid, signal.SIGSTOP)
    stalled_at = time.monotonic()
    requests = {
        "readyz": ShimRequest("GET", "/readyz"),
        "callback": ShimRequest("GET", before[0].callback_url.removeprefix(pipeline.shim_url)),
        "status": ShimRequest("GET", f"/v1/authorizations/{before[1].flow_id}", as_caller=True),
        "start": ShimRequest("POST", "/v1/authorizations", {"network": "LinkedIn"}, as_caller=True),
    }
    try:
        answers = timed_answers(pipeline, requests, timeout=30)
        time.sleep(max(0.0, STALL_S - (time.monotonic() - stalled_at)))
    finally:
        os.kill(server.process.pid, signal.SIGCONT)

    for flow in before:  # the same callbacks, now that Redis answers again
        ledger.callback(flow)
    after = ledger.start("Facebook")
    ledger.callback(after)
    events = ledger.outcomes([*before, after], timeout=30)
    tally = ledger.tally(events)
    fault_report.record(
        "2 redis restart",
        **tally.figures(),
        faults_injected=1,
        server_errors=ledger.server_errors + sum(answer.status == 500 for answer in answers.values()),
        slowest_answer_while_stalled_s=round(max(answer.seconds for answer in answers.values()), 2),
    )
    ledger.close()

    for name, answer in answers.items():
        assert answer.status == 503, (name, answer)
        assert answer.response.json()["error"]["code"] == "unavailable", (name, answer)
        assert answer.seconds <= ANSWER_WITHIN_S, (name, round(answer.seconds, 2))
    assert all(process.popen.poll() is None for process in processes), "a process died with the stall"
    assert tally.lost == [], tally
    assert tally.duplicated == [], tally
    assert tally.by_outcome == {"connection.completed": 3}, tally.by_outcome
    assert ledger.server_errors == 0


def test_flows_in_flight_when_redis_restarts_complete_once(
    stack: tuple[Pipeline, Sandbox, RestartableRedis], fault_report: FaultReport
) -> None:
    pipeline, sandbox, server = stack
    ledger = Ledger(pipeline)
    flows = [ledger.start(NETWORKS[i % len(NETWORKS)]) for i in range(FLOWS)]
    sandbox.set_faults(latency_ms=LATENCY_S * 1000)
    calls_before = sandbox_stats(sandbox)["v2_calls"]
    for flow in flows:
        ledger.callback(flow)
    deadline = time.monotonic() + 10
    while sandbox_stats(sandbox)["v2_calls"] - calls_before < FLOWS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_stats(sandbox)["v2_calls"] - calls_before >= FLOWS, "not every verification started"

    server.stop()
    time.sleep(DOWN_S)  # the calls answer meanwhile: outcomes with nowhere to go
    server.start()
    back_at = time.time()
    events = ledger.outcomes(flows, timeout=TOKEN_TTL / 4 + 15)
    sandbox.set_faults(latency_ms=0)
    tally = ledger.tally(events)
    connections = {c["Id"]: c["calls"] for c in sandbox.connections()}
    completed_after = [epoch(flow_events[-1]["at"]) - back_at for flow_events in events.values()]
    fault_report.record(
        "2 redis restart",
        **tally.figures(),
        faults_injected=1,
        server_errors=ledger.server_errors,
        mid_flow_restart_completed_within_s=round(max(completed_after), 2),
        mid_flow_restart_upstream_calls=sorted(connections.values()),
    )
    ledger.close()

    assert tally.lost == [], tally
    assert tally.duplicated == [], tally
    assert tally.by_outcome == {"connection.completed": FLOWS}, tally.by_outcome
    assert all(process.popen.poll() is None for process in [pipeline.shim, *pipeline.workers])
    for flow_events in events.values():
        assert [e["type"] for e in flow_events] == [
            "authorization.started",
            "callback.received",
            "connection.completed",
        ]
        assert all(connections.get(c["id"], 0) >= 1 for c in flow_events[-1]["data"]["credentials"])
    assert all(1 <= calls <= 2 for calls in connections.values()), connections
    assert ledger.server_errors == 0


def test_a_redis_demoted_to_a_replica_for_a_while_costs_no_process_and_flows_complete_after(
    stack: tuple[Pipeline, Sandbox, RestartableRedis], fault_report: FaultReport
) -> None:
    pipeline, _, server = stack
    processes = [pipeline.shim, *pipeline.workers]
    ledger = Ledger(pipeline)
    before = ledger.start()
    client = redis.Redis.from_url(server.url)
    client.execute_command("REPLICAOF", "127.0.0.1", "1")  # a primary nobody can reach: read-only here
    try:
        time.sleep(DEMOTED_S)
        alive_while_demoted = [process.popen.poll() is None for process in processes]
    finally:
        client.execute_command("REPLICAOF", "NO", "ONE")
        client.close()
    ledger.callback(before)
    after = ledger.start("Twitter")
    ledger.callback(after)
    events = ledger.outcomes([before, after], timeout=30)
    tally = ledger.tally(events)
    fault_report.record(
        "2 redis restart", **tally.figures(), faults_injected=1, server_errors=ledger.server_errors
    )
    ledger.close()

    assert all(alive_while_demoted), "a process exited while Redis was a replica"
    assert all(process.popen.poll() is None for process in processes)
    assert tally.lost == [], tally
    assert tally.duplicated == [], tally
    assert tally.by_outcome == {"connection.completed": 2}, tally.by_outcome
    assert ledger.server_errors == 0
