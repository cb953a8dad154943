"""Redis through Sentinel: the primary SIGKILLed under load, with one replica and three sentinels.

The shim, the worker's store and the Celery broker all find the primary through the sentinels, and
with REDIS_WAIT_REPLICAS=1 a callback is answered 303 only once the replica has it. Callbacks keep
coming while the primary dies and the sentinels promote the replica: each is answered 303 or 503, never
another 5xx; every callback answered 303 reaches exactly one terminal event on the new primary, and no
flow gets two; nothing is restarted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.faults.conftest import FaultReport
from tests.faults.sentinels import MASTER, SentinelCluster, start_cluster
from tests.support.ledger import NETWORKS, Ledger, TrackedFlow, stop_stack
from tests.support.stack import Pipeline, Sandbox, start_pipeline, start_sandbox
from worker.events import TERMINAL_TYPES

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FLOWS = 24
CALLBACKS_PER_SECOND = 20  # the primary dies after the first half: callbacks arrive throughout
TOKEN_TTL = 60
LATENCY_S = 2.0  # Oktopost's answers: the flows acknowledged before the kill are mid-call when it comes


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[SentinelCluster, Pipeline, Sandbox]]:
    cluster = start_cluster()
    sandbox = pipeline = None
    try:
        sandbox = start_sandbox()
        pipeline = start_pipeline(
            cluster.primary.url,
            sandbox.url,
            redis_sentinels=cluster.sentinels,
            redis_sentinel_master=MASTER,
            redis_wait_replicas=1,
            redis_wait_timeout_ms=500,
            token_ttl_seconds=TOKEN_TTL,
        )
        yield cluster, pipeline, sandbox
    finally:
        if pipeline is not None and sandbox is not None:
            stop_stack(pipeline, sandbox)
        elif sandbox is not None:
            sandbox.process.stop()
        cluster.stop()


def test_the_primary_killed_under_load_loses_no_acknowledged_callback(
    stack: tuple[SentinelCluster, Pipeline, Sandbox], fault_report: FaultReport
) -> None:
    cluster, pipeline, sandbox = stack
    ledger = Ledger(pipeline)
    try:
        flows = [ledger.start(NETWORKS[i % len(NETWORKS)]) for i in range(FLOWS)]
        for flow in flows:
            ledger.consent(flow)
        sandbox.set_faults(latency_ms=LATENCY_S * 1000)
        answers: dict[str, int] = {}
        slowest = 0.0
        killed_at = 0.0
        for index, flow in enumerate(flows):
            if index == FLOWS // 2:
                assert cluster.primary.child is not None  # a redis-server of ours
                cluster.primary.child.kill()
                killed_at = time.monotonic()
            sent = time.monotonic()
            answers[flow.flow_id] = callback(flow)
            slowest = max(slowest, time.monotonic() - sent)
            time.sleep(1 / CALLBACKS_PER_SECOND)
        failed_over_in = wait_for_failover(cluster, killed_at)
        ledger.redis = cluster.master_client()  # read the events where they are now
        acknowledged = [flow for flow in flows if answers[flow.flow_id] == 303]
        events = ledger.outcomes(acknowledged, timeout=30)
        every_flow = ledger.events(flows)
        fault_report.record(
            "11 redis failover",
            flows=FLOWS,
            faults_injected=1,
            lost=sum(not _terminal(events[flow.flow_id]) for flow in acknowledged),
            duplicated_terminal=sum(_terminal(e) > 1 for e in every_flow.values()),
            server_errors=sum(status >= 500 and status != 503 for status in answers.values()),
            answered_503=sum(status == 503 for status in answers.values()),
            acknowledged=len(acknowledged),
            promoted_by_s=round(failed_over_in, 2),
            slowest_callback_answer_s=round(slowest, 2),
        )
    finally:
        ledger.close()

    assert set(answers.values()) <= {303, 503}, answers
    assert len(acknowledged) >= FLOWS // 2 - 2, answers  # before the kill, the replica confirms at once
    for flow in acknowledged:
        assert _terminal(events[flow.flow_id]) == 1, (flow.flow_id, events[flow.flow_id])
        assert events[flow.flow_id][-1]["type"] == "connection.completed", events[flow.flow_id]
    assert all(_terminal(flow_events) <= 1 for flow_events in every_flow.values()), every_flow


def test_after_the_failover_reads_follow_the_new_primary_and_unconfirmed_writes_get_503(
    stack: tuple[SentinelCluster, Pipeline, Sandbox],
) -> None:
    cluster, pipeline, _ = stack
    assert cluster.master_port() == cluster.replica.port  # the test above promoted it
    caller = httpx.Client(base_url=pipeline.shim_url, headers=pipeline.headers, timeout=10)
    with caller, cluster.master_client() as primary:
        flow_id = next(iter(primary.scan_iter(match=f"{pipeline.prefix}:flow:*:events"))).decode()
        flow_id = flow_id.split(":")[2]
        read = caller.get(f"/v1/authorizations/{flow_id}")
        created = caller.post("/v1/authorizations", json={"network": "LinkedIn"})

    assert read.status_code == 200, read.text  # the shim found the promoted replica by itself
    assert created.status_code == 503, created.text  # no replica left to confirm a new flow
    assert created.headers["Retry-After"].isdigit()


def callback(flow: TrackedFlow) -> int:
    """The browser's callback; its answer's status (a transport error counts as 599)."""
    try:
        answer = httpx.get(flow.callback_url, timeout=10)
    except httpx.HTTPError:
        return 599
    return answer.status_code


def wait_for_failover(cluster: SentinelCluster, killed_at: float, timeout: float = 30) -> float:
    """Seconds from the kill until the sentinels name the replica the primary."""
    deadline = time.monotonic() + timeout
    while cluster.master_port() != cluster.replica.port:
        assert time.monotonic() < deadline, "the sentinels did not promote the replica"
        time.sleep(0.1)
    return time.monotonic() - killed_at


def _terminal(events: list[dict[str, Any]]) -> int:
    return sum(event["type"] in TERMINAL_TYPES for event in events)
