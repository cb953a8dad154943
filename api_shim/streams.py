"""A flow's events as server-sent events: its stored events, then live ones, ending after the terminal
one. The caller's route (Bearer key) and the hosted page's (the browser's cookie) serve the same stream.

Each message is `id: {seq}`, `event: {type}`, `data: {event JSON}`. A client that reconnects sends the
last id it saw as `Last-Event-ID` and gets only the events after it. `afollow_flow` does the reading: it
subscribes before it replays, so nothing published in between is lost, and it resumes after a dropped
connection to Redis.

When the shim stops (SIGTERM), each open stream ends with a `retry:` hint and no further event: the
client reconnects a moment later, to another shim or to this one restarted, with its `Last-Event-ID`,
and misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import anyio
import redis.asyncio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request

from worker.follow.subscribe import afollow_flow

PING_SECONDS = 15  # a comment line now and then, so proxies do not close a quiet stream
RECONNECT_MS = 1000  # the `retry:` hint that ends a stream when the shim stops
STOP_GRACE_SECONDS = 1.0  # how long a stream has, once the shim stops, to send its hint and end


def last_event_id(request: Request) -> int:
    """The seq the client saw last; 0 (everything) when it sent none, or nothing that is a seq."""
    value = request.headers.get("last-event-id", "").strip()
    return int(value) if value.isdigit() and len(value) < 12 else 0


async def flow_messages(
    client: redis.asyncio.Redis, prefix: str, flow_id: str, after: int = 0
) -> AsyncIterator[ServerSentEvent]:
    """The flow's events with a seq above `after`, as messages, up to and including the terminal one."""
    async for event in afollow_flow(client, flow_id, prefix):
        if event["seq"] > after:
            yield ServerSentEvent(
                data=json.dumps(event, separators=(",", ":")), event=event["type"], id=str(event["seq"])
            )


async def until_stopped(
    messages: AsyncIterator[ServerSentEvent], stopping: anyio.Event
) -> AsyncIterator[ServerSentEvent]:
    """`messages` until they end, or until the shim stops: then a `retry:` hint ends the stream."""
    waiting_for_stop = asyncio.ensure_future(stopping.wait())
    following: asyncio.Future[ServerSentEvent] | None = None
    try:
        while True:
            following = asyncio.ensure_future(anext(messages))
            await asyncio.wait({following, waiting_for_stop}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                yield ServerSentEvent(comment="the server stops: reconnect", retry=RECONNECT_MS)
                return
            try:
                message = following.result()
            except StopAsyncIteration:
                return
            yield message
    finally:
        waiting_for_stop.cancel()
        if following is not None and not following.done():
            following.cancel()
            with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
                await following  # the flow's reader ends (its Redis subscription is closed)
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await messages.aclose()  # type: ignore[attr-defined]


def event_stream(
    client: redis.asyncio.Redis, prefix: str, flow_id: str, request: Request
) -> EventSourceResponse:
    stopping = anyio.Event()  # set by sse-starlette when the server shuts down
    return EventSourceResponse(
        until_stopped(flow_messages(client, prefix, flow_id, last_event_id(request)), stopping),
        ping=PING_SECONDS,
        shutdown_event=stopping,
        shutdown_grace_period=STOP_GRACE_SECONDS,
    )
