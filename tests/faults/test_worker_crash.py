"""A worker SIGKILLed while flows are mid-verification and mid-completion.

Every flow still reaches exactly one terminal event, and the flows the dead worker held are taken up
by a new worker within a quarter of TOKEN_TTL_SECONDS, as the lease sweeper promises: by their leases
alone, as kombu keeps no copy of a flow task's message (worker/queueing/broker.py).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support.fault_report import FaultReport
from tests.support.ledger import ENTITY_KINDS, NETWORKS, FaultStack, Ledger, epoch, sandbox_stats, wait_until
from tests.support.stack import Pipeline, Sandbox
from worker.queueing.names import FLOW_TASKS

# taken up within a quarter of the token's lifetime, timed
pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.alone]

TOKEN_TTL = 20  # the lease, a quarter of it, is 5 s
LATENCY_S = 1.5  # every upstream call is in flight this long, so the kill finds them all mid-call
PROFILES = 6
ENTITIES = 6
STACK = FaultStack({"token_ttl_seconds": TOKEN_TTL, "oktopost_timeout_seconds": 3})


def test_flows_of_a_killed_worker_complete_once_on_a_new_one(
    stack: tuple[Pipeline, Sandbox], fault_report: FaultReport
) -> None:
    pipeline, sandbox = stack
    first = pipeline.start_worker(concurrency=PROFILES + ENTITIES + 4)
    ledger = Ledger(pipeline)
    profiles = [ledger.start(NETWORKS[i % len(NETWORKS)]) for i in range(PROFILES)]
    entities = [ledger.start(network, kind) for network, kind in ENTITY_KINDS[:ENTITIES]]
    for flow in entities:
        ledger.callback(flow)
    offers = ledger.wait_for(entities, "selection.required")

    sandbox.set_faults(latency_ms=LATENCY_S * 1000)
    calls_before = sandbox_stats(sandbox)["v2_calls"]
    for flow in profiles:
        ledger.callback(flow)
    for flow in entities:
        ledger.select(flow, [offers[flow.flow_id]["data"]["entities"][1]["id"]])
    in_flight = wait_until(lambda: sandbox_stats(sandbox)["v2_calls"] - calls_before >= PROFILES + ENTITIES)
    assert in_flight, "the worker did not start every call"
    assert _broker_copies_of_flow_tasks(ledger) == []
    first.kill()
    killed_at = time.time()
    states = {flow.flow_id: _state(ledger, flow.flow_id) for flow in ledger.flows}
    assert set(states.values()) == {"verifying", "completing"}, states

    second = pipeline.start_worker(concurrency=PROFILES + ENTITIES + 4)
    events = ledger.outcomes(ledger.flows, timeout=TOKEN_TTL)
    sandbox.set_faults(latency_ms=0)
    tally = ledger.tally(events)
    taken_up = [epoch(flow_events[-1]["at"]) - LATENCY_S - killed_at for flow_events in events.values()]
    connections = {c["Id"]: c["calls"] for c in sandbox.connections()}
    fault_report.record(
        "1 worker crash",
        **tally.figures(),
        faults_injected=1,
        server_errors=ledger.server_errors,
        taken_up_within_s=round(max(taken_up), 2),
        quarter_of_token_ttl_s=TOKEN_TTL / 4,
        upstream_calls_per_credential=sorted(connections.values()),
    )
    ledger.close()

    assert tally.lost == [], tally
    assert tally.duplicated == [], tally
    assert tally.by_outcome == {"connection.completed": PROFILES + ENTITIES}, tally.by_outcome
    for flow_events in events.values():  # really connected upstream, by the new worker or the old one
        credentials = flow_events[-1]["data"]["credentials"]
        assert all(connections.get(credential["id"], 0) >= 1 for credential in credentials)
    # a credential is answered again only when the killed worker's call had reached the sandbox
    assert all(1 <= calls <= 2 for calls in connections.values()), connections
    assert len(connections) == PROFILES + ENTITIES
    takeover = [line for line in second.output.splitlines() if "ready" in line or "queued again" in line]
    assert max(taken_up) <= TOKEN_TTL / 4 + 1.5, (
        f"taken up {sorted(taken_up)}s after the kill at {killed_at}",
        takeover,
    )
    assert ledger.server_errors == 0


def _state(ledger: Ledger, flow_id: str) -> str:
    return str(ledger.redis.hget(ledger.names.flow_state(flow_id), "state").decode())


def _broker_copies_of_flow_tasks(ledger: Ledger) -> list[str]:
    """The ids of the flow tasks whose messages kombu copied into its unacked hash."""
    held = [json.loads(raw)[0]["headers"] for raw in ledger.redis.hvals("unacked")]
    return [headers["id"] for headers in held if headers.get("task") in FLOW_TASKS]
