"""A backlog at an endpoint that answers at once drains as fast as it answers, every part a real process
(shim, worker, Redis, the sandbox and a receiver), with the default WEBHOOK_TIMEOUT_SECONDS of 10: a
replay queues far more deliveries than the endpoint may have in flight, and each attempt that ends hands
its place to the next waiting one. Before, each waited for a turn a quarter of the timeout after the one
before it (a replay of 42 events took 17 s)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.flows import events_of
from tests.support.receivers import Receiver, register, run_flows, wait_until, webhook_stack
from tests.support.stack import Pipeline, RedisServer, Sandbox
from worker.webhooks.delivery import ENDPOINT_IN_FLIGHT

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(redis_server: RedisServer, sandbox: Sandbox) -> Iterator[tuple[Pipeline, Receiver]]:
    with webhook_stack(redis_server.url, sandbox.url, workers=1, webhook_timeout_seconds=10) as started:
        yield started


def received(receiver: Receiver, path: str) -> list[dict[str, Any]]:
    return [json.loads(item["body"]) for item in receiver.report(path)["accepted"]]


def test_a_replay_to_an_endpoint_that_answers_at_once_is_sent_as_fast_as_it_answers(
    stack: tuple[Pipeline, Receiver],
) -> None:
    pipeline, receiver = stack
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    register(pipeline, receiver, "/live")  # the tenant's events are indexed for replays once it has one
    flows = run_flows(pipeline, 14)  # three events each
    for flow_id in flows:
        assert events_of(pipeline, flow_id)[-1]["type"] == "connection.completed"
    wait_until(lambda: len(received(receiver, "/live")) >= 3 * len(flows), 30, "the live deliveries")
    endpoint = register(pipeline, receiver, "/backlog")  # created after the events: it gets only the replay
    started = time.monotonic()
    replayed = httpx.post(
        f"{pipeline.shim_url}/v1/webhooks/{endpoint}/replay", json={"since": since}, headers=pipeline.headers
    )
    assert replayed.status_code == 202, replayed.text
    queued = replayed.json()["queued"]
    assert queued >= 10 * ENDPOINT_IN_FLIGHT
    wait_until(lambda: len(received(receiver, "/backlog")) >= queued, 60, "the replay's deliveries")
    # turns a share of the timeout apart took 17 s here (a quarter of it, or a twentieth while the
    # worker's own slots were taken); handed on as attempts end, about a second
    assert time.monotonic() - started < 8
    assert {event["flow_id"] for event in received(receiver, "/backlog")} >= set(flows)
