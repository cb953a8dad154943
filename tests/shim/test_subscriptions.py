"""The shared subscription of a shim process's event streams while Redis goes away and comes back, on a
stand-in for the pub/sub connection and fakeredis for the rest (tests/faults/test_shared_subscription.py
does the same with a real Redis restarted)."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import pytest
import redis

from api_shim.streams import flow_messages
from api_shim.subscriptions import SharedSubscriptions
from worker.flows.flow import BrowserUI, Flow, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

PREFIX = "subscriptions"
LIFETIME = 5.0  # a stream that misses its flow's end gives up this soon, and the test fails


class EventsRedis:
    """The shim's client for event streams (api_shim/app.py: no retries of its own), over a Redis that the
    test takes away and gives back: commands go to fakeredis, pub/sub to OutagePubSub."""

    def __init__(self, server: fakeredis.FakeServer) -> None:
        self.commands = fakeredis.FakeAsyncRedis(server=server)
        self.away = False
        self.failing_reads = 0  # the next reads of a stream's history that find Redis gone
        self.pubsubs: list[OutagePubSub] = []

    def pubsub(self) -> OutagePubSub:
        self.pubsubs.append(OutagePubSub(self))
        return self.pubsubs[-1]

    async def xrange(self, stream: str, start: str) -> Any:
        if self.failing_reads:
            self.failing_reads -= 1
            raise redis.ConnectionError("Connection closed by server.")
        return await self.commands.xrange(stream, start)

    def take_away(self) -> None:
        self.away = True
        for pubsub in self.pubsubs:
            pubsub.lose()


class OutagePubSub:
    """redis-py's asyncio PubSub as the shim's client has it: while Redis is away, connecting and
    subscribing raise ConnectionError, and so does a read on a lost connection; a read on a pub/sub that
    never connected raises RuntimeError ("pubsub connection not set"). Publishing is not relayed: a stream
    gets its events from the flow's Redis stream, read when its channel is confirmed."""

    def __init__(self, client: EventsRedis) -> None:
        self.client = client
        self.connected = False
        self.lost = False
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def lose(self) -> None:
        self.lost = True
        self.messages.put_nowait({"type": "lost"})  # wakes a read under way

    async def connect(self) -> None:
        if self.client.away:
            raise redis.ConnectionError("Error 111 connecting: Connection refused.")
        self.connected = True

    async def subscribe(self, *channels: str) -> None:
        await self.connect()
        for channel in channels:
            self.messages.put_nowait({"type": "subscribe", "channel": channel.encode(), "data": 1})

    async def unsubscribe(self, *_channels: str) -> None:
        await self.connect()

    async def get_message(self, timeout: float) -> dict[str, Any] | None:
        if not self.connected:
            raise RuntimeError("pubsub connection not set: did you forget to call subscribe()?")
        if self.lost:
            raise redis.ConnectionError("Connection closed by server.")
        try:
            message = await asyncio.wait_for(self.messages.get(), timeout)
        except TimeoutError:
            return None
        if self.lost:
            raise redis.ConnectionError("Connection closed by server.")
        return message

    async def aclose(self) -> None:
        self.connected = False


def _new_flow(store: FlowStore, index: int) -> Flow:
    return store.create(f"{index:040x}", "LinkedIn", "profile", None, None, BrowserUI.REDIRECT)


async def test_streams_get_what_was_published_during_an_outage_longer_than_the_first_retry() -> None:
    server = fakeredis.FakeServer()
    store = FlowStore(fakeredis.FakeRedis(server=server), RedisNames(PREFIX), Lifetimes())
    flows = [_new_flow(store, index) for index in (1, 2)]
    client = EventsRedis(server)
    subscriptions = SharedSubscriptions(client)  # type: ignore[arg-type]
    streams = [flow_messages(subscriptions, PREFIX, flow.flow_id, 0, LIFETIME) for flow in flows]
    try:
        for stream in streams:
            assert (await anext(stream)).event == "authorization.started"
        client.take_away()
        await asyncio.sleep(0.5)  # the first attempts to subscribe again (after 0.1 s, 0.3 s) find no Redis
        for flow in flows:  # published while the subscription is away
            claimed = store.get(flow.flow_id)
            assert claimed is not None
            assert store.deny(claimed, "the user did not authorize").done
        client.away = False
        for stream in streams:
            rest = [str(message.event) async for message in stream if message.event]
            assert rest == ["authorization.failed"]
    finally:
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]
        await subscriptions.close()


async def test_a_stream_opened_while_redis_is_away_fails_and_holds_no_channel() -> None:
    server = fakeredis.FakeServer()
    store = FlowStore(fakeredis.FakeRedis(server=server), RedisNames(PREFIX), Lifetimes())
    flow = _new_flow(store, 3)
    client = EventsRedis(server)
    subscriptions = SharedSubscriptions(client)  # type: ignore[arg-type]
    try:
        client.take_away()
        with pytest.raises(redis.ConnectionError):
            await anext(flow_messages(subscriptions, PREFIX, flow.flow_id, 0, LIFETIME))
        assert subscriptions.channels == 0
        client.away = False
        stream = flow_messages(subscriptions, PREFIX, flow.flow_id, 0, LIFETIME)  # its client opens it again
        assert (await anext(stream)).event == "authorization.started"
        assert subscriptions.channels == 1
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await subscriptions.close()


async def test_a_stream_whose_read_of_its_history_fails_reads_it_again_and_misses_nothing() -> None:
    server = fakeredis.FakeServer()
    store = FlowStore(fakeredis.FakeRedis(server=server), RedisNames(PREFIX), Lifetimes())
    flow = _new_flow(store, 4)
    assert store.deny(flow, "the user did not authorize").done
    client = EventsRedis(server)
    client.failing_reads = 2  # Redis drops the connection right after the channel's confirmation
    subscriptions = SharedSubscriptions(client)  # type: ignore[arg-type]
    stream = flow_messages(subscriptions, PREFIX, flow.flow_id, 0, LIFETIME)
    try:
        events = [str(message.event) async for message in stream if message.event]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        await subscriptions.close()

    assert events == ["authorization.started", "authorization.failed"]
    assert client.failing_reads == 0
