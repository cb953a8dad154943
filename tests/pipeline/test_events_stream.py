"""The all-flows event stream on a real redis-server: what consumer groups read, trimmed by age."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from tests.support.stack import RedisServer
from worker.flows.flow import Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames

pytestmark = pytest.mark.integration


def test_a_consumer_group_reads_every_flows_events_and_old_entries_are_trimmed(
    redis_server: RedisServer,
) -> None:
    client: Any = redis.Redis.from_url(redis_server.url)  # Any: redis-py's sync-or-async annotations
    names = RedisNames(f"s{time.time_ns()}")
    store = FlowStore(client, names, Lifetimes(flow_ttl=60, token_ttl=60, retention=1))
    stream = names.all_events_stream
    client.xgroup_create(stream, "audit", id="0", mkstream=True)
    for index in range(150):  # more than one of the stream's nodes (100 entries each) of old events
        store.create(f"flow-{index:013d}xyz", "LinkedIn", "profile", None, None)
    read = client.xreadgroup("audit", "c1", {stream: ">"}, count=3)
    entries = read[0][1]
    assert [json.loads(fields[b"event"])["flow_id"] for _, fields in entries] == [
        f"flow-{index:013d}xyz" for index in range(3)
    ]
    assert client.xack(stream, "audit", *[entry_id for entry_id, _ in entries]) == 3
    # past the retention, new appends trim the old entries (MINID, approximately: whole nodes go)
    time.sleep(1.2)
    for index in range(150, 160):
        store.create(f"flow-{index:013d}xyz", "LinkedIn", "profile", None, None)
    first = client.xrange(stream, count=1)[0][1]
    assert json.loads(first[b"event"])["flow_id"] != "flow-0000000000000xyz"
    client.close()
