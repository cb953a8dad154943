"""Webhooks run for years, every part a real process (shim, two workers, Redis, the sandbox and a receiver
that verifies each delivery with the Standard Webhooks library): a rotated secret verifies with either
secret through the overlap and then with the new one only; a dead endpoint is disabled once and the
healthy one is told; enabling with replay_since sends what it missed; one flow's events arrive in seq
order although its first event fails its first attempt; a 5/second endpoint never gets more and loses
nothing; ended deliveries are gone after their retention.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.receivers import Receiver, run_flows, wait_until, webhook_stack
from tests.support.stack import Pipeline, RedisServer, Sandbox

pytestmark = pytest.mark.integration

OVERLAP_SECONDS = 5
DISABLE_AFTER_SECONDS = 3
RETENTION_SECONDS = 5


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, sandbox: Sandbox) -> Iterator[tuple[Pipeline, Receiver]]:
    with webhook_stack(
        redis_server.url,
        sandbox.url,
        workers=2,
        webhook_retry_schedule="300ms,500ms,500ms,1s,1s,1s,1s,1s,1s,1s",
        webhook_secret_overlap_seconds=OVERLAP_SECONDS,
        webhook_disable_after_seconds=DISABLE_AFTER_SECONDS,
        webhook_retention_seconds=RETENTION_SECONDS,
    ) as started:
        yield started


def register(pipeline: Pipeline, receiver: Receiver, path: str, **body: Any) -> tuple[str, str]:
    answer = httpx.post(
        f"{pipeline.shim_url}/v1/webhooks",
        json={"url": f"{receiver.url}{path}", **body},
        headers=pipeline.headers,
    )
    assert answer.status_code == 201, answer.text
    created = answer.json()
    receiver.control(path, secret=created["secret"])
    return str(created["id"]), str(created["secret"])


def received(receiver: Receiver, path: str) -> list[dict[str, Any]]:
    return [json.loads(item["body"]) for item in receiver.report(path)["accepted"]]


def listed(pipeline: Pipeline, endpoint_id: str) -> dict[str, Any]:
    webhooks = httpx.get(f"{pipeline.shim_url}/v1/webhooks", headers=pipeline.headers).json()["webhooks"]
    endpoint: dict[str, Any] = next(item for item in webhooks if item["id"] == endpoint_id)
    return endpoint


def test_a_rotated_secret_verifies_with_either_secret_through_the_overlap(
    stack: tuple[Pipeline, Receiver],
) -> None:
    pipeline, receiver = stack
    endpoint, old_secret = register(pipeline, receiver, "/rotated", events=["authorization.started"])
    run_flows(pipeline, 1)
    wait_until(lambda: len(received(receiver, "/rotated")) == 1, 20, "before the rotation")
    rotated = httpx.post(f"{pipeline.shim_url}/v1/webhooks/{endpoint}/secret", headers=pipeline.headers)
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    rotated_at = time.monotonic()
    run_flows(pipeline, 1)  # the receiver still holds the old secret
    wait_until(lambda: len(received(receiver, "/rotated")) == 2, 20, "old secret, in the overlap")
    receiver.control("/rotated", secret=new_secret)
    run_flows(pipeline, 1)  # a receiver moved to the new secret verifies as well
    wait_until(lambda: len(received(receiver, "/rotated")) == 3, 20, "new secret, in the overlap")
    assert receiver.report("/rotated")["rejected"] == 0
    assert time.monotonic() - rotated_at < OVERLAP_SECONDS, "too slow a machine to see the overlap"
    time.sleep(max(0.0, OVERLAP_SECONDS + 0.5 - (time.monotonic() - rotated_at)))
    receiver.control("/rotated", secret=old_secret)  # past the overlap the old secret signs no more
    run_flows(pipeline, 1)
    wait_until(lambda: receiver.report("/rotated")["rejected"] >= 1, 20, "the old secret refused")
    receiver.control("/rotated", secret=new_secret)  # the retry verifies with the new one
    wait_until(lambda: len(received(receiver, "/rotated")) == 4, 20, "the new secret after the overlap")


def test_a_dead_endpoint_is_disabled_once_the_healthy_one_told_and_enable_replays(
    stack: tuple[Pipeline, Receiver],
) -> None:
    pipeline, receiver = stack
    healthy, _ = register(pipeline, receiver, "/told", events=["webhook.*"])
    time.sleep(1.1)  # `since` (whole seconds) then covers no event of an earlier test
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    dead, _ = register(pipeline, receiver, "/dead", events=["authorization.started"])
    receiver.control("/dead", mode="503")
    flows = run_flows(pipeline, 2)
    wait_until(lambda: listed(pipeline, dead)["status"] == "disabled", 30, "the dead endpoint disabled")
    deliveries = httpx.get(
        f"{pipeline.shim_url}/v1/webhooks/{dead}/deliveries", headers=pipeline.headers
    ).json()["deliveries"]
    assert [item["status"] for item in deliveries] == ["failed", "failed"]  # the pending ones, ended
    assert listed(pipeline, healthy)["status"] == "enabled"
    wait_until(lambda: len(received(receiver, "/told")) >= 1, 20, "the healthy endpoint told")
    time.sleep(1.5)  # any second notice would have come by now
    (notice,) = received(receiver, "/told")
    assert notice["type"] == "webhook.disabled"
    assert notice["data"]["endpoint_id"] == dead
    assert notice["data"]["url"].endswith("/dead")
    assert set(notice) == {"v", "id", "type", "at", "tenant", "data"}
    attempts_when_disabled = len(receiver.report("/dead")["arrivals"])
    time.sleep(1.0)
    assert len(receiver.report("/dead")["arrivals"]) == attempts_when_disabled  # no more attempts
    receiver.control("/dead", mode="ok")
    enabled = httpx.post(
        f"{pipeline.shim_url}/v1/webhooks/{dead}/enable",
        json={"replay_since": since},
        headers=pipeline.headers,
    )
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["status"] == "enabled"
    assert enabled.json()["queued"] == len(flows)
    wait_until(
        lambda: {event["flow_id"] for event in received(receiver, "/dead")} == set(flows), 20, "the replay"
    )


def test_one_flows_events_arrive_in_seq_order_though_the_first_fails_its_first_attempt(
    stack: tuple[Pipeline, Receiver],
) -> None:
    pipeline, receiver = stack
    register(pipeline, receiver, "/ordered")
    receiver.control("/ordered", mode="first_fails", types=["authorization.started"])
    flows = run_flows(pipeline, 8)
    wait_until(lambda: len(received(receiver, "/ordered")) == 3 * len(flows), 30, "every event")
    order: dict[str, list[int]] = {}
    for event in received(receiver, "/ordered"):
        order.setdefault(event["flow_id"], []).append(event["seq"])
    assert order == {flow: [1, 2, 3] for flow in flows}
    assert receiver.report("/ordered")["refused"] == len(flows)  # each first event failed once


def test_a_rate_limited_endpoint_never_gets_more_and_nothing_is_lost_then_retention_clears(
    stack: tuple[Pipeline, Receiver],
) -> None:
    pipeline, receiver = stack
    endpoint, _ = register(pipeline, receiver, "/limited", rate_limit="5/second")
    flows = run_flows(pipeline, 6)
    wait_until(lambda: len(received(receiver, "/limited")) == 3 * len(flows), 30, "every event")
    arrivals = sorted(receiver.report("/limited")["arrivals"])
    # attempts start at most 5 in any second of Redis's clock; they reach the receiver a little later, by
    # as much as the machine's load delays a thread: windows of 0.8 s leave that much room
    busiest = max(sum(1 for later in arrivals if first <= later < first + 0.8) for first in arrivals)
    assert busiest <= 5, arrivals
    # retention: the ended deliveries go, keys and listing alike
    client: Any = pipeline.redis()
    try:
        pattern = f"{pipeline.prefix}:delivery:{endpoint}.*"
        assert client.keys(pattern)
        wait_until(lambda: not client.keys(pattern), RETENTION_SECONDS + 10, "retention")
        page = httpx.get(f"{pipeline.shim_url}/v1/webhooks/{endpoint}/deliveries", headers=pipeline.headers)
        assert page.json() == {"deliveries": [], "next_cursor": None}
    finally:
        client.close()
