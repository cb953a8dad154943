"""A flow's events as server-sent events: its stored events, then live ones, ending after the terminal
one. The caller's route (Bearer key) and the hosted page's (the browser's cookie) serve the same stream.

Each message is `id: {seq}`, `event: {type}`, `data: {event JSON}`. A client that reconnects sends the
last id it saw as `Last-Event-ID` and gets only the events after it. `afollow_flow` does the reading: it
subscribes before it replays, so nothing published in between is lost, and it resumes after a dropped
connection to Redis.

Streams are bounded: at most `SSE_MAX_PER_FLOW` on one flow and `SSE_MAX_PER_KEY` with one caller key,
counted in Redis across every shim process (scripts/stream_admit.lua; 429 with Retry-After past either),
all of a process's streams share one pub/sub connection (api_shim/subscriptions.py),
at most `MAX_STREAMS_PER_PROCESS` in one process (its Redis pool holds one connection per stream and a
few more), and each ends after `SSE_MAX_SECONDS` with a `retry:` hint, so that an EventSource opens it
again (with its Last-Event-ID) rather than holding one connection for ever.

When the shim stops (SIGTERM), each open stream ends with a `retry:` hint and no further event: the
client reconnects a moment later, to another shim or to this one restarted, with its `Last-Event-ID`,
and misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import redis.asyncio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request

from api_shim.errors import ApiError
from api_shim.subscriptions import RESYNC, SUBSCRIBED, SharedSubscriptions
from worker import scripts
from worker.events import TERMINAL_TYPES
from worker.follow.subscribe import FlowFollower, afollow_flow
from worker.keys import RedisNames

PING_SECONDS = 15  # a comment line now and then, so proxies do not close a quiet stream
MAX_STREAMS_PER_PROCESS = 200
POOL_CONNECTIONS = MAX_STREAMS_PER_PROCESS + 20  # a pub/sub connection per stream, and its XRANGEs
RETRY_MILLISECONDS = 1000  # after a stream's lifetime, the client opens it again this soon
BUSY_RETRY_SECONDS = 5
HISTORY_RETRY_SECONDS = 0.2  # a stream's read of its flow's stored events that failed is made again

log = logging.getLogger(__name__)
RECONNECT_MS = 1000  # the `retry:` hint that ends a stream when the shim stops
STOP_GRACE_SECONDS = 1.0  # how long a stream has, once the shim stops, to send its hint and end


def last_event_id(request: Request) -> int:
    """The seq the client saw last; 0 (everything) when it sent none, or nothing that is a seq. A number
    past any seq a flow can reach (more than 18 digits) is read as past every one: nothing is sent again."""
    value = request.headers.get("last-event-id", "").strip()
    # ASCII digits only: str.isdigit also takes "²" and other digits int() refuses
    if not (value.isascii() and value.isdigit()):
        return 0
    return int(value) if len(value) <= 18 else sys.maxsize


def key_digest(secret: str) -> str:
    """What a stream's key is counted by: never the key itself."""
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


async def shared_follow(
    subscriptions: SharedSubscriptions, flow_id: str, prefix: str, lifetime: float | None
) -> AsyncIterator[dict[str, Any]]:
    """afollow_flow on the process's shared subscription: history once the channel is live, then live
    events, each once, until the terminal one or the end of `lifetime`."""
    follower = FlowFollower(flow_id, prefix, lifetime)
    queue = await subscriptions.listen(follower.channel)
    try:
        while not follower.ended and (wait := follower.read_seconds()) is not None:
            try:
                item = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                continue
            if item in (SUBSCRIBED, RESYNC):
                events = list(follower.replay(await _history(subscriptions, follower)))
            else:
                events = follower.from_message({"type": "message", "data": item})
            for event in events:
                yield event
    finally:
        await subscriptions.leave(follower.channel, queue)


async def _history(subscriptions: SharedSubscriptions, follower: FlowFollower) -> list[Any]:
    """The flow's stored events from where the stream is: read again shortly when Redis is away a moment
    (the channel stays subscribed meanwhile, so nothing is missed), none once the stream's time is up."""
    while (wait := follower.read_seconds()) is not None:
        try:
            stored: list[Any] = await subscriptions.client.xrange(follower.stream, follower.replay_start)
            return stored
        except redis.RedisError as error:
            log.warning("reading a flow's events for its stream failed (%s): again", type(error).__name__)
            await asyncio.sleep(min(HISTORY_RETRY_SECONDS, wait))
    return []


async def flow_messages(
    client: redis.asyncio.Redis | SharedSubscriptions,
    prefix: str,
    flow_id: str,
    after: int = 0,
    lifetime: float | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """The flow's events with a seq above `after`, as messages, up to and including the terminal one;
    after `lifetime` seconds without it, a last message that tells the client to reconnect. Read on
    the shared subscription when given one, else on a subscription of its own."""
    ended = False
    if isinstance(client, SharedSubscriptions):
        events = shared_follow(client, flow_id, prefix, lifetime)
    else:
        events = afollow_flow(client, flow_id, prefix, timeout=lifetime)
    async for event in events:
        ended = event["type"] in TERMINAL_TYPES
        if event["seq"] > after:
            yield ServerSentEvent(
                data=json.dumps(event, separators=(",", ":")), event=event["type"], id=str(event["seq"])
            )
    if not ended:
        yield ServerSentEvent(comment="this stream's time is up: reconnect", retry=RETRY_MILLISECONDS)


@dataclass
class EventStreams:
    """The shim's event streams, under their caps (see the module's docstring)."""

    client: redis.asyncio.Redis
    names: RedisNames
    per_flow: int
    per_key: int
    lifetime: float
    open_here: int = 0
    _admit: Any = field(init=False, repr=False)  # an AsyncScript: awaited with keys and args
    subscriptions: SharedSubscriptions = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._admit = scripts.register(self.client, "stream_admit")
        self.subscriptions = SharedSubscriptions(self.client)

    async def open(self, flow_id: str, key: str, request: Request) -> EventSourceResponse:
        """The flow's stream for a client holding `key` (a caller key's or a browser cookie's digest);
        429 when a cap is reached."""
        if self.open_here >= MAX_STREAMS_PER_PROCESS:
            raise _busy("this shim serves as many event streams as it may; try again shortly")
        stream_id = secrets.token_hex(8)
        keys = [self.names.flow_event_streams(flow_id), self.names.key_event_streams(key)]
        args = [stream_id, self.lifetime + 30, self.per_flow, self.per_key]
        admitted = await self._admit(keys=keys, args=args)
        if admitted == -1:
            raise _busy(f"at most {self.per_flow} event streams may be open on one flow")
        if admitted == -2:
            raise _busy(f"at most {self.per_key} event streams may be open with one key")
        self.open_here += 1
        after = last_event_id(request)
        events = flow_messages(self.subscriptions, self.names.prefix, flow_id, after, self.lifetime)
        messages = self._counted(keys, stream_id, events)
        stopping = anyio.Event()  # set by sse-starlette when the server shuts down
        return EventSourceResponse(
            until_stopped(messages, stopping),
            ping=PING_SECONDS,
            shutdown_event=stopping,
            shutdown_grace_period=STOP_GRACE_SECONDS,
        )

    async def _counted(
        self, keys: list[str], stream_id: str, messages: AsyncIterator[ServerSentEvent]
    ) -> AsyncIterator[ServerSentEvent]:
        try:
            async for message in messages:
                yield message
        finally:
            self.open_here -= 1
            try:  # the stream's score lets it lapse by itself if this does not get through
                for counted in keys:
                    await self.client.zrem(counted, stream_id)
            except (redis.RedisError, OSError):
                log.info("an ended event stream was not uncounted: it lapses by itself")


def _busy(message: str) -> ApiError:
    return ApiError(429, "too_many_streams", message, {"Retry-After": str(BUSY_RETRY_SECONDS)})


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
