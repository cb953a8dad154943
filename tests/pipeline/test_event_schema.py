"""The event JSON Schema is generated from the pydantic models; the committed copy must be current."""

from __future__ import annotations

import json

from worker.events import SCHEMA_PATH, event_json_schema, render_schema


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
