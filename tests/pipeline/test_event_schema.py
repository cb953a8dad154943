"""The event JSON Schema is generated from the pydantic models; the committed copy must be current."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import jsonschema
import pytest

from worker.connections.records import ConnectionStore, DeleteAsked
from worker.events import SCHEMA_PATH, ConnectedCredential, event_json_schema, render_schema
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames


def test_committed_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text() == render_schema(), "stale: run `python -m worker.events` and commit"


def test_schema_names_every_event_type() -> None:
    text = json.dumps(event_json_schema())
    for event_type in (
        "authorization.started",
        "callback.received",
        "selection.required",
        "selection.submitted",
        "connection.completed",
        "authorization.failed",
        "authorization.expired",
    ):
        assert event_type in text


def published_events() -> list[dict[str, Any]]:
    """A flow's events as the flow store publishes them (fakeredis, the real Lua steps), and a connection's
    lifecycle event: what subscribers and webhooks receive."""
    names = RedisNames("schematest")
    flows = FlowStore(fakeredis.FakeRedis(), names, Lifetimes())
    connections = ConnectionStore(flows.redis, names, 86400)
    flow = flows.create("f" * 40, "LinkedIn", "profile", "user-42", None)
    assert flows.claim_callback(flow, "okt-token-schema").done
    flows.take_work(flow.flow_id, "task", FlowState.VERIFYING)
    taken = flows.get(flow.flow_id)
    assert taken is not None
    made = ConnectedCredential(id="003-1", name="Acme", status="valid", network="LinkedIn")
    assert flows.complete(taken, [made], "task").done
    assert connections.ask_delete("default", "003-1") is DeleteAsked.ASKED
    assert connections.deleted("default", "003-1", "demo-account")
    return [json.loads(fields[b"event"]) for _, fields in flows.redis.xrange(names.all_events_stream)]


def test_every_published_event_validates_against_the_shipped_schema() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    events = published_events()
    assert [event["type"] for event in events] == [
        "authorization.started",
        "callback.received",
        "connection.completed",
        "connection.deleted",
    ]
    for event in events:
        jsonschema.validate(event, schema)


def test_the_schema_refuses_an_event_without_its_envelope() -> None:
    """Every field a published event carries is required: an id to deduplicate by, its type, its time as
    every event writes it, a seq from 1."""
    schema = json.loads(SCHEMA_PATH.read_text())
    started = published_events()[0]
    broken = [
        {key: value for key, value in started.items() if key != dropped}
        for dropped in ("v", "id", "seq", "type", "at", "tenant", "reference")
    ]
    broken += [
        {**started, "seq": 0},
        {**started, "at": "yesterday"},
        {**started, "at": "2026-12-07T10:00:00Z"},
    ]
    for event in broken:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(event, schema)
