"""The dispatcher's housekeeping: an entry that is not an event is skipped, not read forever (the
dispatcher reads the stream from a cursor of its own, so no consumer records pile up)."""

from __future__ import annotations

import json
import time
from typing import Any

import fakeredis

from worker.follow.consume import StreamedEvent
from worker.keys import RedisNames
from worker.webhooks.dispatcher import Dispatcher
from worker.webhooks.endpoints import Replayed, WebhookStore

URL = "https://hooks.partner.example/oktopost"


def dispatcher_on(client: Any, prefix: str) -> tuple[Dispatcher, WebhookStore, list[str]]:
    names = RedisNames(prefix)
    store = WebhookStore(client, names, 3600, (5.0,))
    queued: list[str] = []
    return Dispatcher(client, names, store, queued.append, "worker-1"), store, queued


def test_an_entry_that_is_not_an_event_is_passed_over_with_its_batch_not_read_forever() -> None:
    client: Any = fakeredis.FakeRedis()
    dispatcher, store, queued = dispatcher_on(client, "dispatchtest")
    endpoint = store.create_endpoint("default", URL, [])
    time.sleep(0.002)
    stream = dispatcher.names.all_events_stream
    event = {"id": "evt_1", "type": "connection.completed", "flow_id": "f", "tenant": "default"}
    unordered = {**event, "id": "evt_0", "seq": "a"}  # a flow's event without a place in its order
    entries = [
        client.xadd(stream, {"event": body}).decode()
        for body in (
            b"{not json",
            json.dumps([1]).encode(),
            json.dumps(unordered).encode(),
            json.dumps(event).encode(),
        )
    ]
    batch = [StreamedEvent(entry, client.xrange(stream, entry, entry)[0][1][b"event"]) for entry in entries]
    assert dispatcher.dispatch(batch) == entries  # all of them handled: the cursor moves past them
    assert queued == [f"{endpoint.id}.evt_1"]


def test_a_replay_skips_an_entry_that_is_not_an_event() -> None:
    client: Any = fakeredis.FakeRedis()
    dispatcher, store, _ = dispatcher_on(client, "replaytest")
    endpoint = store.create_endpoint("default", URL, [])
    event = {"id": "evt_1", "type": "connection.completed", "flow_id": "f", "tenant": "default"}
    index = dispatcher.names.tenant_event_index("default")
    client.xadd(index, {"event": b"{not json"})
    client.xadd(index, {"event": json.dumps({**event, "id": "evt_0", "seq": [2]})})
    client.xadd(index, {"event": json.dumps(event)})
    queued: list[str] = []
    assert store.replay(endpoint, 0, queued.append) == Replayed(1)
    assert queued == [f"{endpoint.id}.evt_1"]
