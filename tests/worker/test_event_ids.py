"""worker.events.new_event_id: every event's `id` is a random (version 4) UUID, spelled as uuid spells it."""

from __future__ import annotations

import random
import uuid

import pytest

from worker.events import CallbackData, CallbackReceived, new_event_id


def test_an_event_id_is_the_uuid4_of_its_random_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(11)
    edges = [bytes(16), b"\xff" * 16]
    for raw in edges + [rng.randbytes(16) for _ in range(5_000)]:
        monkeypatch.setattr("worker.events.os.urandom", lambda size, raw=raw: raw[:size])
        assert new_event_id() == str(uuid.UUID(bytes=raw, version=4))


def test_events_get_distinct_random_uuids() -> None:
    ids = [new_event_id() for _ in range(2_000)]
    ids.append(CallbackReceived(flow_id="f", network="LinkedIn", entity_type="profile", data=_data()).id)
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


def _data() -> CallbackData:
    return CallbackData(token_expires_at="2026-12-06T20:51:07.123Z")
