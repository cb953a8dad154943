"""Redis restarts (AOF on) while flows are mid-verification: their upstream calls are in flight when it
goes, and answer while it is away, so the worker has an outcome it cannot record yet.

The same worker process records it once Redis is back (or the lease sweeper hands the flow to another
attempt): every flow completes exactly once, no event is lost or doubled, and the upstream saw each
verification once or, for a flow taken up again, twice.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.conftest import (
    Pipeline,
    RedisServer,
    Sandbox,
    start_pipeline,
    start_redis,
    start_sandbox,
    stop_redis,
)
from tests.faults.conftest import FaultReport
from tests.faults.ledger import NETWORKS, Ledger, epoch, sandbox_stats

pytestmark = [pytest.mark.faults, pytest.mark.integration]

AOF = ["--appendonly", "yes", "--appendfsync", "always"]
LATENCY_S = 1.5
DOWN_S = 2.5
FLOWS = 6
TOKEN_TTL = 40


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Pipeline, Sandbox, list[RedisServer]]]:
    directory = tempfile.mkdtemp(prefix="okc-aof-")
    servers = [start_redis(AOF, directory=directory)]
    sandbox = start_sandbox()
    pipeline = start_pipeline(servers[0].url, sandbox.url, token_ttl_seconds=TOKEN_TTL)
    yield pipeline, sandbox, servers
    pipeline.stop()
    sandbox.process.stop()
    stop_redis(servers[-1])


def test_flows_in_flight_when_redis_restarts_complete_once(
    stack: tuple[Pipeline, Sandbox, list[RedisServer]], fault_report: FaultReport
) -> None:
    pipeline, sandbox, servers = stack
    ledger = Ledger(pipeline)
    flows = [ledger.start(NETWORKS[i % len(NETWORKS)]) for i in range(FLOWS)]
    sandbox.faults(latency_ms=LATENCY_S * 1000)
    calls_before = sandbox_stats(sandbox)["v2_calls"]
    for flow in flows:
        ledger.callback(flow)
    deadline = time.monotonic() + 10
    while sandbox_stats(sandbox)["v2_calls"] - calls_before < FLOWS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_stats(sandbox)["v2_calls"] - calls_before >= FLOWS, "not every verification started"

    stop_redis(servers[-1])
    time.sleep(DOWN_S)  # the calls answer meanwhile: outcomes with nowhere to go
    servers.append(start_redis(AOF, port=servers[0].port, directory=servers[0].directory))
    back_at = time.time()
    events = ledger.outcomes(flows, timeout=TOKEN_TTL / 4 + 15)
    sandbox.faults(latency_ms=0)
    tally = ledger.tally(events)
    connections = {c["Id"]: c["calls"] for c in sandbox.connections()}
    completed_after = [epoch(flow_events[-1]["at"]) - back_at for flow_events in events.values()]
    fault_report.record(
        "2 redis restart",
        flows=tally.flows,
        faults_injected=1,
        lost=len(tally.lost),
        duplicated_terminal=len(tally.duplicated),
        server_errors=ledger.server_errors,
        mid_flow_restart_completed_within_s=round(max(completed_after), 2),
        mid_flow_restart_upstream_calls=sorted(connections.values()),
    )
    ledger.close()

    assert tally.lost == [] and tally.duplicated == [], tally
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
