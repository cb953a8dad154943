"""follow_flow and afollow_flow against a real redis-server whose connections drop and which restarts:
every event arrives once, in seq order, up to the terminal one; with a timeout they give up in time."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import redis.asyncio

from tests.support.stack import RedisServer, start_redis, stop_redis
from worker.follow.subscribe import afollow_flow, follow_flow
from worker.keys import RedisNames

pytestmark = pytest.mark.integration

PREFIX = "follow"
FLOW_ID = "flow-1"
NAMES = RedisNames(PREFIX)
AOF = ["--appendonly", "yes", "--appendfsync", "always"]
# a subscriber's client as a user builds it: redis-py's own retries (it then reconnects and subscribes
# again by itself) or none (a lost connection raises out of every read)
CLIENTS = {"client retries": {}, "no client retries": {"retry": None}}


def event(seq: int, last: int) -> str:
    kind = "authorization.started" if seq == 1 else "selection.submitted"
    return json.dumps(
        {"flow_id": FLOW_ID, "seq": seq, "type": "connection.completed" if seq == last else kind}
    )


def write_event(client: redis.Redis, seq: int, last: int, patience: float = 30) -> None:
    """What a flow's transition writes, both in one step: the entry in the stream, the live message.
    While Redis is away it tries again, so events are also written while the subscriber reconnects."""
    give_up = time.monotonic() + patience
    while True:
        try:
            with client.pipeline(transaction=True) as step:
                step.xadd(NAMES.flow_stream(FLOW_ID), {"event": event(seq, last)})
                step.publish(NAMES.flow_channel(FLOW_ID), event(seq, last))
                step.execute()
            return
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > give_up:
                raise
            time.sleep(0.02)


def wait_until_subscribed(client: redis.Redis) -> None:
    channel = NAMES.flow_channel(FLOW_ID)
    give_up = time.monotonic() + 10
    while True:
        subscribers: list[tuple[bytes, int]] = client.pubsub_numsub(channel)  # type: ignore[assignment]
        if dict(subscribers).get(channel.encode(), 0) >= 1:
            return
        assert time.monotonic() < give_up, "the subscriber never subscribed"
        time.sleep(0.01)


@dataclass
class Subscriber:
    """follow_flow (sync) or afollow_flow (async) running in a thread of its own, as a service runs it."""

    kind: str
    url: str
    timeout: float | None
    client_options: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            if self.kind == "sync":
                self._follow()
            else:
                asyncio.run(self._afollow())
        except BaseException as error:
            self.error = error
        self.seconds = time.monotonic() - started

    def _follow(self) -> None:
        client = redis.Redis.from_url(self.url, **self.client_options)
        try:
            self.events.extend(follow_flow(client, FLOW_ID, PREFIX, timeout=self.timeout))
        finally:
            client.close()

    async def _afollow(self) -> None:
        client = redis.asyncio.Redis.from_url(self.url, **self.client_options)
        try:
            async for followed in afollow_flow(client, FLOW_ID, PREFIX, timeout=self.timeout):
                self.events.append(followed)
        finally:
            await client.aclose()

    def finished(self) -> Subscriber:
        self._thread.join((self.timeout or 0) + 10)
        assert not self._thread.is_alive(), "the subscriber did not stop at its timeout"
        return self

    @property
    def seqs(self) -> list[int]:
        return [followed["seq"] for followed in self.events]


def assert_every_event_once_in_order(subscriber: Subscriber, last: int) -> None:
    assert subscriber.error is None, repr(subscriber.error)
    assert subscriber.seqs == list(range(1, last + 1))
    assert subscriber.events[-1]["type"] == "connection.completed"


class AofRedis:
    """A redis-server of the test's own, with AOF, that shuts down and starts again on its port and data."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="okc-follow-")
        self.servers: list[RedisServer] = [start_redis(AOF, directory=self.directory)]

    @property
    def url(self) -> str:
        return self.servers[-1].url

    def client(self) -> redis.Redis:
        return self.servers[-1].client()

    def shutdown(self) -> None:
        """SHUTDOWN: Redis writes the AOF (every event so far) and exits."""
        self.client().shutdown()
        process = self.servers[-1].process
        assert process is not None
        process.wait(10)

    def restart(self) -> None:
        self.shutdown()
        time.sleep(0.3)  # down for a while, so the subscriber's reads fail and it backs off
        self.servers.append(start_redis(AOF, port=self.servers[-1].port, directory=self.directory))

    def stop(self) -> None:
        for server in self.servers:
            stop_redis(server)
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def server() -> Iterator[AofRedis]:
    started = AofRedis()
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("client_options", CLIENTS.values(), ids=CLIENTS.keys())
def test_subscriber_whose_connection_is_killed_gets_every_event_once(
    server: AofRedis, kind: str, client_options: dict[str, Any]
) -> None:
    writer = server.client()
    subscriber = Subscriber(kind, server.url, timeout=30, client_options=client_options)
    last = 40
    for seq in range(1, last + 1):
        if seq % 10 == 1 and seq > 1:
            wait_until_subscribed(writer)
            writer.client_kill_filter(_type="pubsub")
        # right after the kill: published while the subscriber has no subscription, only in the stream
        write_event(writer, seq, last)
        time.sleep(0.005)
    assert_every_event_once_in_order(subscriber.finished(), last)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_subscriber_gets_every_event_once_across_a_redis_restart(server: AofRedis, kind: str) -> None:
    subscriber = Subscriber(kind, server.url, timeout=60)
    last = 30
    for seq in range(1, 11):
        write_event(server.client(), seq, last)
    wait_until_subscribed(server.client())
    server.restart()
    for seq in range(11, last + 1):
        # the first of these are written while the subscriber still waits to reconnect
        write_event(server.client(), seq, last)
        time.sleep(0.02)
    assert_every_event_once_in_order(subscriber.finished(), last)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_subscriber_with_a_timeout_gives_up_at_it_while_redis_stays_down(server: AofRedis, kind: str) -> None:
    timeout = 3.0
    subscriber = Subscriber(kind, server.url, timeout=timeout)
    for seq in range(1, 4):
        write_event(server.client(), seq, last=10)
    wait_until_subscribed(server.client())
    server.shutdown()
    subscriber.finished()
    assert subscriber.seqs == [1, 2, 3]
    assert isinstance(subscriber.error, redis.ConnectionError), repr(subscriber.error)
    assert timeout - 0.1 <= subscriber.seconds <= timeout + 1.5


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_subscriber_with_a_wrong_password_fails_at_once_without_a_timeout(kind: str) -> None:
    server = start_redis(["--requirepass", "right-password"])
    try:
        url = server.url.replace("redis://", "redis://:wrong-password@")
        subscriber = Subscriber(kind, url, timeout=None).finished()
    finally:
        stop_redis(server)
    assert isinstance(subscriber.error, redis.AuthenticationError), repr(subscriber.error)
    assert subscriber.seconds < 2
