"""A flow's events as server-sent events: its stored events, then live ones, ending after the terminal
one. The caller's route (Bearer key) and the hosted page's (the browser's cookie) serve the same stream.

Each message is `id: {seq}`, `event: {type}`, `data: {event JSON}`. A client that reconnects sends the
last id it saw as `Last-Event-ID` and gets only the events after it. `afollow_flow` does the reading: it
subscribes before it replays, so nothing published in between is lost, and it resumes after a dropped
connection to Redis.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import redis.asyncio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request

from worker.follow.subscribe import afollow_flow

PING_SECONDS = 15  # a comment line now and then, so proxies do not close a quiet stream


def last_event_id(request: Request) -> int:
    """The seq the client saw last; 0 (everything) when it sent none, or nothing that is a seq."""
    value = request.headers.get("last-event-id", "").strip()
    # ASCII digits only: str.isdigit also takes "²" and other digits int() refuses
    return int(value) if value.isascii() and value.isdigit() and len(value) < 12 else 0


async def flow_messages(
    client: redis.asyncio.Redis, prefix: str, flow_id: str, after: int = 0
) -> AsyncIterator[ServerSentEvent]:
    """The flow's events with a seq above `after`, as messages, up to and including the terminal one."""
    async for event in afollow_flow(client, flow_id, prefix):
        if event["seq"] > after:
            yield ServerSentEvent(
                data=json.dumps(event, separators=(",", ":")), event=event["type"], id=str(event["seq"])
            )


def event_stream(
    client: redis.asyncio.Redis, prefix: str, flow_id: str, request: Request
) -> EventSourceResponse:
    return EventSourceResponse(
        flow_messages(client, prefix, flow_id, last_event_id(request)), ping=PING_SECONDS
    )
