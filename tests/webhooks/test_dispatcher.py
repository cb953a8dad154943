"""The dispatcher's housekeeping: an entry that is not an event is skipped, not read forever, and the
records of consumers gone for good leave the group (a real redis-server: consumers' idle times)."""

from __future__ import annotations

import json
import time
from typing import Any

import fakeredis
import pytest
import redis

from tests.conftest import RedisServer
from worker.follow.consume import StreamedEvent
from worker.keys import RedisNames
from worker.webhooks.dispatcher import GROUP, Dispatcher
from worker.webhooks.endpoints import WebhookStore

URL = "https://hooks.partner.example/oktopost"


def dispatcher_on(client: Any, prefix: str) -> tuple[Dispatcher, WebhookStore, list[str]]:
    names = RedisNames(prefix)
    store = WebhookStore(client, names, 3600, (5.0,))
    queued: list[str] = []
    return Dispatcher(client, names, store, queued.append, "worker-1"), store, queued


def test_an_entry_that_is_not_an_event_is_acknowledged_with_its_batch_not_read_forever() -> None:
    client: Any = fakeredis.FakeRedis()
    dispatcher, store, queued = dispatcher_on(client, "dispatchtest")
    endpoint = store.create_endpoint("default", URL, [])
    time.sleep(0.002)
    stream = dispatcher.names.all_events_stream
    event = {"id": "evt_1", "type": "connection.completed", "flow_id": "f", "tenant": "default"}
    entries = [
        client.xadd(stream, {"event": body}).decode()
        for body in (b"{not json", json.dumps([1]).encode(), json.dumps(event).encode())
    ]
    batch = [StreamedEvent(entry, client.xrange(stream, entry, entry)[0][1][b"event"]) for entry in entries]
    assert dispatcher.dispatch(batch) == entries  # all of them acknowledged
    assert queued == [f"{endpoint.id}.evt_1"]


@pytest.mark.integration
def test_consumers_gone_for_good_leave_the_group_and_those_with_pending_entries_stay(
    redis_server: RedisServer,
) -> None:
    client: Any = redis.Redis.from_url(redis_server.url)
    prefix = f"gone{time.time_ns()}"
    dispatcher, _, _ = dispatcher_on(client, prefix)
    stream = dispatcher.names.all_events_stream
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for _ in range(3):
        client.xadd(stream, {"event": "{}"})
    client.xreadgroup(GROUP, "holds-an-entry", {stream: ">"}, count=1)  # pending, unacknowledged
    for consumer in ("gone-worker", "worker-1"):  # worker-1: this dispatcher itself
        ((_, [(entry, _)]),) = client.xreadgroup(GROUP, consumer, {stream: ">"}, count=1)
        client.xack(stream, GROUP, entry)
    time.sleep(0.3)
    assert dispatcher.forget_gone_consumers(idle_seconds=0.2) == ["gone-worker"]
    left = {consumer["name"] for consumer in client.xinfo_consumers(stream, GROUP)}
    assert left == {b"holds-an-entry", b"worker-1"}
    client.close()
