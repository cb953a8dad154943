"""For subscribing services: follow a flow's events without a gap or a duplicate.

    import redis
    from worker.subscribe import follow_flow

    for event in follow_flow(redis.Redis(), flow_id):
        print(event["seq"], event["type"])        # history first, then live, ends after the terminal event

It subscribes to the flow's channel *before* reading the stored history (XRANGE), then drops live
messages it has already seen by `seq`: an event published between the two is neither lost nor repeated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import redis

from worker.events import TERMINAL_TYPES
from worker.keys import RedisNames


def follow_flow(
    client: redis.Redis, flow_id: str, prefix: str = "oktopost", timeout: float | None = None
) -> Iterator[dict[str, Any]]:
    """Yields the flow's events in `seq` order, stopping after its terminal event or after `timeout`."""
    names = RedisNames(prefix)
    deadline = None if timeout is None else time.monotonic() + timeout
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(names.flow_channel(flow_id))
    try:
        last_seq = 0
        history: list[tuple[Any, dict[Any, Any]]] = client.xrange(names.flow_stream(flow_id))  # type: ignore[assignment]
        for _, fields in history:
            # works with decode_responses=True clients too
            event = json.loads(fields.get(b"event") or fields["event"])
            last_seq = event["seq"]
            yield event
            if event["type"] in TERMINAL_TYPES:
                return
        while deadline is None or time.monotonic() < deadline:
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            message = pubsub.get_message(timeout=wait)
            if message is None or message["type"] != "message":
                continue
            event = json.loads(message["data"])
            if event["seq"] <= last_seq:
                continue
            last_seq = event["seq"]
            yield event
            if event["type"] in TERMINAL_TYPES:
                return
    finally:
        pubsub.close()
