"""Expiry in every stage, many flows at once: how late after its deadline each `authorization.expired` comes.

tests/pipeline covers the four stages with one flow each; here five flows per stage expire together,
the verify and complete stages under nothing but transient faults (every kind, no honest answer), so
they also show that faults outlasting the deadline end a flow as expired, never as failed.
"""

from __future__ import annotations

import statistics

import pytest

from tests.support.fault_report import FaultReport
from tests.support.ledger import (
    ENTITY_KINDS,
    NETWORKS,
    FaultStack,
    Ledger,
    TrackedFlow,
    epoch,
    faults_injected,
)
from tests.support.stack import Pipeline, Sandbox
from worker.upstream.retry import RetryPolicy

# deadlines of a few seconds, and how late each expiry comes
pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.alone]

FLOW_TTL = 4
TOKEN_TTL = 6
PER_STAGE = 5
LATE_AT_MOST_S = 2.5  # the sweeper runs every 0.25 s; the rest is a busy machine's scheduling
# a worker ends a flow early when its next backoff (up to the policy's longest) would pass the deadline
EARLY_AT_MOST_S = RetryPolicy().backoff_max + 0.5
EVERY_FAULT = {
    "error_rate": 0.2,
    "throttle_rate": 0.2,
    "timeout_rate": 0.2,
    "drop_rate": 0.2,
    "malformed_rate": 0.2,
    "retry_after_s": 1,
}
STACK = FaultStack(
    {"flow_ttl_seconds": FLOW_TTL, "token_ttl_seconds": TOKEN_TTL, "oktopost_timeout_seconds": 1},
    concurrency=12,
)


def test_many_flows_expire_in_every_stage_close_to_their_deadline(
    stack: tuple[Pipeline, Sandbox], fault_report: FaultReport
) -> None:
    pipeline, sandbox = stack
    ledger = Ledger(pipeline)
    stages: dict[str, list[TrackedFlow]] = {
        "verify": [ledger.start(NETWORKS[i]) for i in range(PER_STAGE)],
        "selection": [ledger.start(*ENTITY_KINDS[i]) for i in range(PER_STAGE)],
        "complete": [ledger.start(*ENTITY_KINDS[PER_STAGE + i]) for i in range(PER_STAGE)],
    }
    for flow in stages["selection"] + stages["complete"]:
        ledger.callback(flow)
    offers = ledger.wait_for(
        stages["selection"] + stages["complete"], "selection.required", timeout=TOKEN_TTL
    )
    stages["callback"] = [ledger.start(NETWORKS[i]) for i in range(PER_STAGE)]  # never called back

    sandbox.set_faults(seed=5, **EVERY_FAULT)
    for flow in stages["verify"]:
        ledger.callback(flow)
    for flow in stages["complete"]:
        ledger.select(flow, [offers[flow.flow_id]["data"]["entities"][1]["id"]])
    events = ledger.outcomes(ledger.flows, timeout=FLOW_TTL + TOKEN_TTL + 10)
    injected = faults_injected(sandbox)
    sandbox.set_faults(**dict.fromkeys(EVERY_FAULT, 0))
    tally = ledger.tally(events)

    lateness: dict[str, list[float]] = {}
    for stage, flows in stages.items():
        for flow in flows:
            flow_events = events[flow.flow_id]
            claimed = [e for e in flow_events if e["type"] == "callback.received"]
            deadline = epoch(claimed[0]["data"]["token_expires_at"]) if claimed else flow.expires_at
            lateness.setdefault(stage, []).append(epoch(flow_events[-1]["at"]) - deadline)
    fault_report.record(
        "4 expiry",
        **tally.figures(),
        faults_injected=injected,
        server_errors=ledger.server_errors,
        lateness_s={stage: _distribution(values) for stage, values in lateness.items()},
    )
    ledger.close()

    assert tally.lost == [], tally
    assert tally.duplicated == [], tally
    assert dict(tally.by_outcome) == {f"authorization.expired:{stage}": PER_STAGE for stage in stages}, (
        tally.by_outcome
    )
    for stage, values in lateness.items():
        assert min(values) >= -EARLY_AT_MOST_S, (stage, values)
        assert max(values) <= LATE_AT_MOST_S, (stage, values)
    assert ledger.server_errors == 0


def _distribution(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "min": round(ordered[0], 2),
        "median": round(statistics.median(ordered), 2),
        "p95": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 2),
        "max": round(ordered[-1], 2),
    }
