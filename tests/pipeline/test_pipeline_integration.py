"""The whole pipeline as real processes: sandbox, shim and a Celery worker, over HTTP and Redis pub/sub."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from celery import Celery

from tests.support.flows import (
    callback,
    consent,
    events_of,
    flow_status,
    okt_of,
    select,
    start_flow,
    wait_for_event,
)
from tests.support.ledger import start_stack
from tests.support.stack import RETURN_URL, Pipeline, RedisServer, Sandbox

pytestmark = pytest.mark.integration

NETWORKS = ["Twitter", "Facebook", "LinkedIn", "YouTube", "Instagram"]


@pytest.mark.parametrize("network", NETWORKS)
def test_profile_flow_completes(pipeline: Pipeline, sandbox: Sandbox, network: str) -> None:
    created = start_flow(pipeline, network=network.lower(), ui="redirect")
    assert created["channel"] == f"{pipeline.prefix}:flow:{created['flow_id']}"
    answer = callback(consent(created["redirect_url"]))
    assert answer.status_code == 303
    location = urlsplit(answer.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == RETURN_URL
    assert parse_qs(location.query) == {"flow_id": [created["flow_id"]], "status": ["processing"]}

    events = events_of(pipeline, created["flow_id"])
    assert [e["type"] for e in events] == [
        "authorization.started",
        "callback.received",
        "connection.completed",
    ]
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert all(e["network"] == network and e["reference"] == "user-42" for e in events)
    credential = events[-1]["data"]["credentials"][0]
    assert credential["status"] == "valid"
    assert credential["network"] == network
    assert credential["id"] in {c["Id"] for c in sandbox.connections()}

    status = flow_status(pipeline, created["flow_id"])
    assert status["status"] == "completed"
    assert status["type"] == "profile"
    assert len(status["events"]) == 3


@pytest.mark.parametrize("entity_type", ["page", "group"])
def test_entity_flow_waits_for_selection_then_connects_the_chosen(
    pipeline: Pipeline, sandbox: Sandbox, entity_type: str
) -> None:
    created = start_flow(pipeline, network="Facebook", entity_type=entity_type)
    assert callback(consent(created["redirect_url"])).status_code == 303
    offer = wait_for_event(pipeline, created["flow_id"], "selection.required")
    entities = offer["data"]["entities"]
    assert len(entities) >= 3
    assert entities[0]["is_connected"] is True
    assert set(entities[0]) >= {"id", "name", "network", "image_link", "network_username", "is_connected"}
    chosen = [entities[1]["id"], entities[2]["id"]]

    assert select(pipeline, created["flow_id"], chosen).status_code == 202
    again = select(pipeline, created["flow_id"], chosen)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "wrong_state"

    events = events_of(pipeline, created["flow_id"])
    assert [e["type"] for e in events] == [
        "authorization.started",
        "callback.received",
        "selection.required",
        "selection.submitted",
        "connection.completed",
    ]
    assert events[3]["data"] == {"ids": chosen}
    connected = {c["id"] for c in events[-1]["data"]["credentials"]}
    assert len(connected) == 2
    assert connected <= {c["Id"] for c in sandbox.connections()}


def test_selection_with_unknown_ids_is_422_and_changes_nothing(pipeline: Pipeline) -> None:
    created = start_flow(pipeline, network="LinkedIn", entity_type="page")
    callback(consent(created["redirect_url"]))
    offer = wait_for_event(pipeline, created["flow_id"], "selection.required")
    refused = select(pipeline, created["flow_id"], [offer["data"]["entities"][0]["id"], "not-offered"])
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "invalid_selection"
    assert select(pipeline, created["flow_id"], []).status_code == 422
    status = flow_status(pipeline, created["flow_id"])
    assert status["status"] == "awaiting_selection"
    assert len(status["events"]) == 3


def test_denied_authorization_fails_the_flow(pipeline: Pipeline) -> None:
    created = start_flow(pipeline, ui="redirect")
    denied_url = consent(created["redirect_url"], "deny")
    assert "okt=" not in denied_url
    assert "error=access_denied" in denied_url
    answer = callback(denied_url)
    assert answer.status_code == 303
    assert "status=denied" in answer.headers["location"]
    events = events_of(pipeline, created["flow_id"])
    assert [e["type"] for e in events] == ["authorization.started", "authorization.failed"]
    assert events[-1]["data"]["code"] == "authorization_denied"
    assert events[-1]["data"]["retryable"] is False


def test_repeated_callback_enqueues_once(pipeline: Pipeline, sandbox: Sandbox) -> None:
    created = start_flow(pipeline)
    url = consent(created["redirect_url"])
    answers = [callback(url) for _ in range(5)]
    assert {a.status_code for a in answers} == {303}
    assert len({a.headers["location"] for a in answers}) == 1
    events = events_of(pipeline, created["flow_id"])
    assert [e["type"] for e in events].count("callback.received") == 1
    time.sleep(0.5)  # a second verification would add an event or a call by now
    assert len(events_of(pipeline, created["flow_id"])) == 3
    credential = events[-1]["data"]["credentials"][0]["id"]
    assert [c["calls"] for c in sandbox.connections() if c["Id"] == credential] == [1]


def test_second_token_for_a_claimed_flow_is_409(pipeline: Pipeline) -> None:
    created = start_flow(pipeline)
    url = consent(created["redirect_url"])
    assert callback(url).status_code == 303
    other = url.replace(okt_of(url), "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883")
    refused = callback(other)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "flow_already_claimed"
    assert events_of(pipeline, created["flow_id"])[-1]["type"] == "connection.completed"


def test_callback_input_errors(pipeline: Pipeline) -> None:
    created = start_flow(pipeline)
    base = f"{pipeline.shim_url}/v1/callback"
    assert callback(f"{base}/{created['flow_id']}?okt=bad%20token!").status_code == 400
    assert callback(f"{base}/unknownflowid0000000000000?okt=abcdefgh.1234").status_code == 404
    assert callback(f"{base}/x?okt=abcdefgh.1234").status_code == 404
    assert callback(f"{base}/{created['flow_id']}?okt=abcdefgh.1&okt=abcdefgh.2").status_code == 400
    status = flow_status(pipeline, created["flow_id"])
    assert status["status"] == "awaiting_callback"
    assert len(status["events"]) == 1


def test_late_subscriber_replays_the_whole_history(pipeline: Pipeline) -> None:
    created = start_flow(pipeline, network="Instagram")
    callback(consent(created["redirect_url"]))
    first = events_of(pipeline, created["flow_id"])
    time.sleep(0.2)
    late = events_of(pipeline, created["flow_id"])
    assert late == first
    assert [e["seq"] for e in late] == [1, 2, 3]


def test_redelivered_task_on_finished_flow_does_nothing(pipeline: Pipeline, sandbox: Sandbox) -> None:
    created = start_flow(pipeline)
    callback(consent(created["redirect_url"]))
    events = events_of(pipeline, created["flow_id"])
    credential = events[-1]["data"]["credentials"][0]["id"]
    producer = Celery("redeliver", broker=pipeline.redis_url)
    producer.send_task("oktopost.verify", args=[created["flow_id"]])
    producer.send_task("oktopost.complete", args=[created["flow_id"]])
    time.sleep(1.5)
    assert events_of(pipeline, created["flow_id"]) == events
    assert [c["calls"] for c in sandbox.connections() if c["Id"] == credential] == [1]


def test_every_event_reaches_the_global_channel(pipeline: Pipeline) -> None:
    listener = pipeline.redis().pubsub(ignore_subscribe_messages=True)
    listener.subscribe(f"{pipeline.prefix}:events")
    created = start_flow(pipeline)
    callback(consent(created["redirect_url"]))
    events_of(pipeline, created["flow_id"])
    seen: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(seen) < 3 and time.monotonic() < deadline:
        message = listener.get_message(timeout=0.5)
        if message and created["flow_id"].encode() in message["data"]:
            seen.append(message["data"])
    assert len(seen) == 3


@pytest.fixture(scope="module")
def short_lived(redis_server: RedisServer) -> Iterator[tuple[Pipeline, Sandbox]]:
    """A pipeline whose flows wait 2 s for a callback and whose tokens live 3 s, on its own sandbox."""
    with contextlib.ExitStack() as started:
        running, own_sandbox = start_stack(started, redis_server.url, flow_ttl_seconds=2, token_ttl_seconds=3)
        yield running, own_sandbox


def _expired_within(
    pipeline: Pipeline, flow_id: str, stage: str, deadline: float, slack: float = 2.5
) -> None:
    events = events_of(pipeline, flow_id, timeout=15)
    assert events[-1]["type"] == "authorization.expired"
    assert events[-1]["data"] == {"stage": stage}
    assert [e["type"] for e in events].count("authorization.expired") == 1
    assert time.time() <= deadline + slack, f"expired {time.time() - deadline:.1f}s after its deadline"


def test_flow_without_callback_expires(short_lived: tuple[Pipeline, Sandbox]) -> None:
    pipeline, _ = short_lived
    created = start_flow(pipeline)
    _expired_within(pipeline, created["flow_id"], "callback", time.time() + 2)
    late = callback(consent(created["redirect_url"]))
    assert late.status_code == 410


def test_selection_that_never_comes_expires(short_lived: tuple[Pipeline, Sandbox]) -> None:
    pipeline, _ = short_lived
    created = start_flow(pipeline, entity_type="group")
    callback(consent(created["redirect_url"]))
    claimed_at = time.time()
    wait_for_event(pipeline, created["flow_id"], "selection.required", timeout=10)
    _expired_within(pipeline, created["flow_id"], "selection", claimed_at + 3)
    assert select(pipeline, created["flow_id"], ["x"]).status_code == 410


def test_token_dying_during_verification_expires(short_lived: tuple[Pipeline, Sandbox]) -> None:
    pipeline, own_sandbox = short_lived
    own_sandbox.set_faults(error_rate=1.0)
    try:
        created = start_flow_despite_faults(pipeline, own_sandbox)
        callback(consent(created["redirect_url"]))
        _expired_within(pipeline, created["flow_id"], "verify", time.time() + 3)
    finally:
        own_sandbox.set_faults(error_rate=0.0)


def test_token_dying_during_completion_expires(short_lived: tuple[Pipeline, Sandbox]) -> None:
    pipeline, own_sandbox = short_lived
    created = start_flow(pipeline, entity_type="page")
    callback(consent(created["redirect_url"]))
    claimed_at = time.time()
    offer = wait_for_event(pipeline, created["flow_id"], "selection.required", timeout=10)
    own_sandbox.set_faults(timeout_rate=1.0)
    try:
        assert select(pipeline, created["flow_id"], [offer["data"]["entities"][1]["id"]]).status_code == 202
        _expired_within(pipeline, created["flow_id"], "complete", claimed_at + 3)
    finally:
        own_sandbox.set_faults(timeout_rate=0.0)


def start_flow_despite_faults(pipeline: Pipeline, own_sandbox: Sandbox) -> dict[str, Any]:
    """Step 1 goes through the faults' gap: start the flow first, then turn the faults on for the worker."""
    own_sandbox.set_faults(error_rate=0.0)
    created = start_flow(pipeline)
    own_sandbox.set_faults(error_rate=1.0)
    return created
