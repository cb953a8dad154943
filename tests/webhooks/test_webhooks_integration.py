"""Signed webhooks end to end, every part a real process: shim, worker, Redis, the sandbox and a receiver
that verifies each delivery with the Standard Webhooks library and records what it accepted.

One stack goes through a healthy receiver, one that answers 503 and then hangs for a while, and a worker
SIGKILLed in the middle of deliveries: every event of every flow arrives, verified, with the very JSON
the all-flows stream holds; attempts show in /deliveries; no secret reaches a log or a task message.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.processes import Process, start_cli
from tests.support.receivers import Receiver, accepted, register, run_flows, wait_until, webhook_stack
from tests.support.stack import API_KEY, Pipeline, RedisServer, Sandbox

pytestmark = pytest.mark.integration

SCHEDULE = "500ms,1s,1s,1s,2s,2s,2s,2s"


@pytest.fixture
def stack(redis_server: RedisServer, sandbox: Sandbox) -> Iterator[tuple[Pipeline, Receiver]]:
    with webhook_stack(redis_server.url, sandbox.url, webhook_retry_schedule=SCHEDULE) as started:
        yield started


def serving(pipeline: Pipeline, what: str) -> Process:
    name = f"{what}-{time.time_ns()}@%h"
    command = ["worker", "--concurrency", "8", "--serve", what, "--hostname", name]
    worker = start_cli(command, env=pipeline.env, name=f"worker-{what}")
    pipeline.workers.append(worker)
    return worker


def stream_events(pipeline: Pipeline, flow_ids: set[str]) -> dict[str, str]:
    """event id -> the event's JSON as the all-flows stream holds it, for these flows' events."""
    client: Any = pipeline.redis()
    entries = client.xrange(f"{pipeline.prefix}:events:stream")
    client.close()
    events = {}
    for _, fields in entries:
        body = fields[b"event"].decode()
        event = json.loads(body)
        if event["flow_id"] in flow_ids:
            events[event["id"]] = body
    return events


def undelivered(pipeline: Pipeline, endpoint_id: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{pipeline.shim_url}/v1/webhooks/{endpoint_id}/deliveries",
        params={"limit": 100},
        headers=pipeline.headers,
    )
    return [item for item in answer.json()["deliveries"] if item["status"] != "delivered"]


def every_event_arrived(pipeline: Pipeline, receiver: Receiver, path: str, flows: list[str]) -> bool:
    events = stream_events(pipeline, set(flows))
    return len(events) == 3 * len(flows) and set(events) <= set(accepted(receiver, path))


def test_every_event_arrives_signed_through_outages_and_a_killed_worker(
    stack: tuple[Pipeline, Receiver],
) -> None:
    pipeline, receiver = stack
    everything = register(pipeline, receiver, "/all")
    filtered = register(pipeline, receiver, "/completed", ["connection.completed"])
    worker = pipeline.start_worker(concurrency=8)

    # a healthy receiver: every event of many flows, with the stream's very bytes
    flows = run_flows(pipeline, 12)
    wait_until(lambda: every_event_arrived(pipeline, receiver, "/all", flows), 30, "healthy deliveries")

    # the receiver answers 503, then hangs past the timeout, then recovers
    receiver.control("/all", mode="503", seconds=2)
    flows += run_flows(pipeline, 5)
    time.sleep(1.5)
    receiver.control("/all", mode="hang", seconds=2.5, delay=1.5)
    flows += run_flows(pipeline, 3)
    time.sleep(max(0.0, 2.5 - 0.1))
    # recovered: answering at once again (a receiver slower than the timeout times every attempt out,
    # and a flow's later events wait for its earlier ones to be over)
    receiver.control("/all")
    wait_until(lambda: every_event_arrived(pipeline, receiver, "/all", flows), 60, "deliveries after outage")
    assert receiver.report("/all")["refused"] > 0

    # a worker SIGKILLed while its deliveries are in flight: its tasks and events are taken up again
    # (each held half the timeout: a whole attempt, answer included, fits in it on a busy machine)
    receiver.control("/all", delay=0.5)
    flows += run_flows(pipeline, 4)
    wait_until(lambda: receiver.report("/all")["in_flight"] > 0, 20, "a delivery in flight")
    worker.kill()
    time.sleep(0.5)  # the dispatcher of no worker: events wait in the stream, tasks in the queue
    broker: Any = pipeline.redis()
    # the tasks queued, and those the killed worker held (kombu's unacked hash, restored later)
    queued = broker.lrange(f"{pipeline.prefix}.oktopost-connect.webhooks", 0, -1)
    queued += [json.dumps(json.loads(held)[0]).encode() for held in broker.hvals("unacked")]
    broker.close()
    receiver.control("/all")
    # taken up by a worker for flows and one for deliveries (`worker --serve`), each serving its queue only
    flows_worker, deliveries_worker = (serving(pipeline, what) for what in ("flows", "deliveries"))
    wait_until(lambda: every_event_arrived(pipeline, receiver, "/all", flows), 60, "deliveries after a kill")

    events = stream_events(pipeline, set(flows))
    received = accepted(receiver, "/all")
    assert {event_id: received[event_id] for event_id in events} == events  # the same JSON, byte for byte
    assert receiver.report("/all")["rejected"] == 0  # every one verified by the library
    completed = {event_id for event_id, body in events.items() if '"connection.completed"' in body}
    wait_until(lambda: set(accepted(receiver, "/completed")) == completed, 20, "the filtered endpoint")

    deliveries = httpx.get(
        f"{pipeline.shim_url}/v1/webhooks/{everything}/deliveries",
        params={"limit": 100},  # a page holds 50 unless asked for more
        headers=pipeline.headers,
    ).json()["deliveries"]
    ours = [item for item in deliveries if item["event_id"] in events]
    assert len(ours) == len(events)
    wait_until(lambda: not undelivered(pipeline, everything), 30, "every delivery delivered")
    retried = [item for item in ours if item["attempts"] > 1]
    assert retried, ours
    assert {item["last_status_code"] for item in ours if item["status"] == "delivered"} == {204}

    # a task message carries the delivery's id, nothing else (Flower shows its arguments)
    ours_queued = [
        message for message in queued if b"oktopost.deliver" in message and everything.encode() in message
    ]
    assert ours_queued, "no delivery task was waiting or held while its worker died"
    for message in ours_queued:
        envelope = json.loads(message)
        assert envelope["headers"]["task"] == "oktopost.deliver"
        args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        assert kwargs == {}
        assert len(args) == 1
        assert args[0].split(".")[0] in (everything, filtered), args
        assert receiver.url not in message.decode()
        assert "whsec_" not in message.decode()
    flows_log, deliveries_log = flows_worker.log_path.read_text(), deliveries_worker.log_path.read_text()
    assert "oktopost.deliver[" not in flows_log  # a task received: "Task oktopost.deliver[id] received"
    assert "oktopost.deliver[" in deliveries_log
    assert "oktopost.verify[" not in deliveries_log
    for process in [pipeline.shim, *pipeline.workers]:
        log = process.log_path.read_text()
        assert "whsec_" not in log
        assert API_KEY not in log
