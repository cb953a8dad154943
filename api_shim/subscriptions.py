"""One pub/sub connection per shim process, shared by every event stream it serves.

A stream subscribes to its flow's channel here rather than on a connection of its own: the first
stream of a channel subscribes it, the last one to leave unsubscribes it, and one reader task hands
each message to the queues of that channel's streams. A stream learns that its channel is live (so that
it may read the flow's stored events without a gap) from a SUBSCRIBED item in its queue; after a lost
connection the reader subscribes every channel again and each stream gets SUBSCRIBED again, so it reads
what it missed from the flow's Redis stream (its `seq` drops what it has seen). While Redis is away the
reader tries again (0.1 s, doubling to 2 s) until every channel is subscribed; streams wait meanwhile.
A stream whose queue overflows (a client that does not read) gets RESYNC instead of the messages it
could not take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio

from worker.follow.subscribe import CONNECTION_ERRORS, FIRST_BACKOFF_SECONDS, LAST_BACKOFF_SECONDS
from worker.replies import text

log = logging.getLogger(__name__)

SUBSCRIBED = "subscribed"  # the channel is live: read the stored events now
RESYNC = "resync"  # messages were dropped: read the stored events again
QUEUE_SIZE = 64  # a flow has a handful of events; more waiting means its client stopped reading
READ_SECONDS = 1.0


class SharedSubscriptions:
    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._queues: dict[str, set[asyncio.Queue[Any]]] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def channels(self) -> int:
        return len(self._queues)

    async def listen(self, channel: str) -> asyncio.Queue[Any]:
        """A queue that gets SUBSCRIBED once `channel` is live, then its messages' data."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUE_SIZE)
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self.client.pubsub()
            listeners = self._queues.setdefault(channel, set())
            listeners.add(queue)
            if len(listeners) == 1:
                try:
                    await self._pubsub.subscribe(channel)  # its confirmation brings SUBSCRIBED
                except BaseException:  # Redis is away: this stream fails, no later one takes it for live
                    del self._queues[channel]
                    raise
            else:
                queue.put_nowait(SUBSCRIBED)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.get_running_loop().create_task(self._read())
        return queue

    async def leave(self, channel: str, queue: asyncio.Queue[Any]) -> None:
        async with self._lock:
            listeners = self._queues.get(channel, set())
            listeners.discard(queue)
            if listeners or channel not in self._queues:
                return
            del self._queues[channel]
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self._pubsub.unsubscribe(channel)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()

    async def _read(self) -> None:
        backoff = FIRST_BACKOFF_SECONDS
        while True:  # for the process's life: without a channel, a read waits its second and returns
            try:
                message = await self._pubsub.get_message(timeout=READ_SECONDS)
                backoff = FIRST_BACKOFF_SECONDS
            except CONNECTION_ERRORS as error:
                log.info("event streams' subscription lost (%s): subscribing again", type(error).__name__)
                backoff = await self._reconnect(backoff)
                continue
            if message is not None:
                self._hand_out(message)

    async def _reconnect(self, backoff: float) -> float:
        """Subscribes every channel again, waiting `backoff` before the first attempt and twice as long
        (up to LAST_BACKOFF_SECONDS) before each next one, for as long as Redis is away; returns the wait
        for after the next lost connection."""
        while True:
            await asyncio.sleep(backoff)
            backoff = min(LAST_BACKOFF_SECONDS, backoff * 2)
            try:
                await self._resubscribe()
            except CONNECTION_ERRORS as error:
                log.debug("event streams' subscription not back yet (%s)", type(error).__name__)
                continue
            log.info("event streams' subscription is back: %d channels", len(self._queues))
            return backoff

    async def _resubscribe(self) -> None:
        """A new connection with every channel on it; a connection error while Redis is away (a read on a
        pub/sub that never connected would raise a RuntimeError, and end the reader)."""
        async with self._lock:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = self.client.pubsub()
            await self._pubsub.connect()  # with no channel too: the next read needs the connection
            if self._queues:
                await self._pubsub.subscribe(*self._queues)  # each confirmation brings SUBSCRIBED

    def _hand_out(self, message: dict[str, Any]) -> None:
        channel = text(message.get("channel") or b"")
        if message["type"] == "subscribe":
            item: Any = SUBSCRIBED
        elif message["type"] == "message":
            item = message["data"]
        else:
            return
        for queue in list(self._queues.get(channel, ())):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:  # its client does not read: it reads the stored events later
                _drain(queue)
                queue.put_nowait(RESYNC)


def _drain(queue: asyncio.Queue[Any]) -> None:
    while not queue.empty():
        queue.get_nowait()
