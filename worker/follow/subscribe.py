"""For subscribing services: follow a flow's events without a gap or a duplicate, across lost connections.

    import redis
    from worker.follow.subscribe import follow_flow

    for event in follow_flow(redis.Redis(), flow_id):
        print(event["seq"], event["type"])        # history first, then live, ends after the terminal event

It subscribes to the flow's channel and waits until Redis confirms the subscription *before* reading the
stored history (XRANGE), then drops live messages it has already seen by `seq`: an event published
between the two is neither lost nor repeated. When the connection drops (or Redis restarts) it does the
same again: subscribes, reads the stream from just after the last entry it read, goes live. `afollow_flow`
is the same for asyncio code (`redis.asyncio.Redis`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from contextlib import aclosing
from typing import Any

import redis
import redis.asyncio

from worker.events import TERMINAL_TYPES
from worker.keys import RedisNames
from worker.replies import text

# What a lost, restarting or still loading Redis raises: waited out. Anything else is not.
CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# redis-py raises these as connection errors, but waiting does not mend wrong credentials.
REFUSED_ERRORS = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)

# The wait before reconnecting doubles from the first to the last, and starts again once reconnected.
FIRST_BACKOFF_SECONDS = 0.1
LAST_BACKOFF_SECONDS = 2.0

# How long one read of pub/sub waits, so that a deadline is noticed while nothing arrives.
READ_SECONDS = 1.0


class _Follower:
    """What follow_flow and afollow_flow share, none of it I/O: which event is new, where the stream is to
    be read from after a reconnection, how long to wait for a message and before reconnecting."""

    def __init__(self, flow_id: str, prefix: str, timeout: float | None) -> None:
        names = RedisNames(prefix)
        self.channel = names.flow_channel(flow_id)
        self.stream = names.flow_stream(flow_id)
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.ended = False  # the terminal event was yielded
        self._last_seq = 0
        self._last_entry_id: str | None = None
        self._backoff = FIRST_BACKOFF_SECONDS

    @property
    def replay_start(self) -> str:
        """XRANGE's start: the whole stream at first, then only what comes after the last entry read."""
        return "-" if self._last_entry_id is None else f"({self._last_entry_id}"

    def read_seconds(self) -> float | None:
        """How long the next pub/sub read may wait; None when the timeout is up."""
        if self.deadline is None:
            return READ_SECONDS
        left = self.deadline - time.monotonic()
        return None if left <= 0 else min(READ_SECONDS, left)

    @staticmethod
    def confirms_subscription(message: dict[str, Any]) -> bool:
        """Redis confirmed the subscription: the first time, or after redis-py reconnected by itself (when
        the client has retries). Either way live messages flow from here on, and the stream has the rest."""
        return bool(message["type"] == "subscribe")

    def from_message(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """The event in a pub/sub message; none when it is no event or one already yielded."""
        if message["type"] != "message":
            return []
        event = json.loads(message["data"])
        return [event] if self._is_new(event) else []

    def replay(self, history: list[Any]) -> Iterator[dict[str, Any]]:
        """The events of stream entries (XRANGE's answer) not yielded yet, up to the terminal one."""
        for entry_id, fields in history:
            self._last_entry_id = text(entry_id)
            # bytes keys from a plain client, str keys from a decode_responses one
            event = json.loads(fields.get(b"event") or fields["event"])
            if self._is_new(event):
                yield event
                if self.ended:
                    return
        # subscribed and caught up: the next lost connection is retried quickly again
        self._backoff = FIRST_BACKOFF_SECONDS

    def _is_new(self, event: dict[str, Any]) -> bool:
        if event["seq"] <= self._last_seq:
            return False
        self._last_seq = event["seq"]
        self.ended = event["type"] in TERMINAL_TYPES
        return True

    def backoff_after(self, error: Exception) -> float:
        """Seconds to wait before reconnecting; raises `error` once the timeout is up, or at once when
        Redis refused the credentials."""
        if isinstance(error, REFUSED_ERRORS):
            raise error
        delay = self._backoff
        self._backoff = min(LAST_BACKOFF_SECONDS, self._backoff * 2)
        if self.deadline is None:
            return delay
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise error
        return min(delay, left)


# For readers that bring their own subscription (the shim shares one among its event streams).
FlowFollower = _Follower


def follow_flow(
    client: redis.Redis, flow_id: str, prefix: str = "oktopost", timeout: float | None = None
) -> Iterator[dict[str, Any]]:
    """Yields the flow's events in `seq` order, each once, and stops after its terminal event or when
    `timeout` seconds have passed (None: no limit).

    When the connection to Redis drops, or Redis restarts, it reconnects (after 0.1 s, doubling up to 2 s
    between attempts), subscribes again and reads what the stream holds since the last event it read, so
    no event is lost or repeated. Without a timeout it waits for Redis to come back however long that
    takes; with one it raises the last ConnectionError or TimeoutError once the timeout is up. Refused
    credentials (AuthenticationError) raise at once.
    """
    follower = _Follower(flow_id, prefix, timeout)
    while True:
        try:
            yield from _follow_connected(client, follower)
            return
        except CONNECTION_ERRORS as error:
            time.sleep(follower.backoff_after(error))


def _follow_connected(client: redis.Redis, follower: _Follower) -> Iterator[dict[str, Any]]:
    """follow_flow on one connection: until the flow ends, the timeout is up or the connection fails."""
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(follower.channel)
        while not follower.ended and (wait := follower.read_seconds()) is not None:
            message = pubsub.get_message(timeout=wait)
            if message is None:
                continue
            if follower.confirms_subscription(message):
                history: list[Any] = client.xrange(follower.stream, follower.replay_start)  # type: ignore[assignment]
                yield from follower.replay(history)
            else:
                yield from follower.from_message(message)
    finally:
        pubsub.close()


async def afollow_flow(
    client: redis.asyncio.Redis, flow_id: str, prefix: str = "oktopost", timeout: float | None = None
) -> AsyncIterator[dict[str, Any]]:
    """follow_flow for asyncio: the same events, the same reconnection, the same timeout."""
    follower = _Follower(flow_id, prefix, timeout)
    while True:
        try:
            async with aclosing(_afollow_connected(client, follower)) as events:
                async for event in events:
                    yield event
            return
        except CONNECTION_ERRORS as error:
            await asyncio.sleep(follower.backoff_after(error))


async def _afollow_connected(
    client: redis.asyncio.Redis, follower: _Follower
) -> AsyncGenerator[dict[str, Any], None]:
    """afollow_flow on one connection, like _follow_connected."""
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(follower.channel)
        while not follower.ended and (wait := follower.read_seconds()) is not None:
            message = await pubsub.get_message(timeout=wait)
            if message is None:
                continue
            events: Iterable[dict[str, Any]]
            if follower.confirms_subscription(message):
                events = follower.replay(await client.xrange(follower.stream, follower.replay_start))
            else:
                events = follower.from_message(message)
            for event in events:
                yield event
    finally:
        await pubsub.aclose()
