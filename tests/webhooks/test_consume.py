"""The all-flows stream read with a consumer group on a real redis-server: a consumer that dies mid-batch,
one that stops and starts again, and one that takes over a dead one's entries, together end with every
event, each acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio

from tests.support.stack import RedisServer
from worker.follow.consume import StreamedEvent, aconsume_all_events, consume_all_events
from worker.keys import RedisNames

pytestmark = pytest.mark.integration


class Crash(BaseException):
    """What kills a consumer in the middle of its batch (not an Exception: the helper must not catch it)."""


def append(client: Any, stream: str, first: int, count: int) -> None:
    with client.pipeline(transaction=False) as pipe:
        for index in range(first, first + count):
            pipe.xadd(stream, {"event": json.dumps({"id": f"event-{index}", "type": "callback.received"})})
        pipe.execute()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_consumers_stopped_killed_and_restarted_end_with_every_event(redis_server: RedisServer) -> None:
    client: Any = redis.Redis.from_url(redis_server.url)
    prefix = f"c{time.time_ns()}"
    stream = RedisNames(prefix).all_events_stream
    seen: list[str] = []

    def consumer(name: str, stop: threading.Event, crash_after: int | None = None) -> threading.Thread:
        def handle(event: StreamedEvent) -> None:
            if crash_after is not None and len(seen) >= crash_after:
                raise Crash
            seen.append(event.event["id"])

        def run() -> None:
            # a crash ends the consumer: the entries it read stay pending, unacknowledged
            with contextlib.suppress(Crash):
                consume_all_events(
                    client, "audit", name, handle, prefix, start="0", claim_idle=0.5, stop=stop
                )

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    append(client, stream, 0, 250)
    # 1. a consumer dies after 120 events, with the rest of its batch read and not acknowledged
    consumer("a", threading.Event(), crash_after=120).join(timeout=10)
    assert len(seen) == 120
    assert client.xpending(stream, "audit")["pending"] > 0
    append(client, stream, 250, 50)  # appended while nobody reads
    # 2. another consumer takes over the dead one's entries, and reads on; it is stopped mid-run
    stop = threading.Event()
    thread = consumer("b", stop)
    wait_until(lambda: len(set(seen)) >= 300)
    stop.set()
    thread.join(timeout=5)
    append(client, stream, 300, 40)
    # 3. started again, it reads what came while it was away; the killed consumer coming back finds nothing
    stop = threading.Event()
    threads = [consumer("b", stop), consumer("a", stop)]
    append(client, stream, 340, 10)
    wait_until(lambda: len(set(seen)) >= 350)
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    assert set(seen) == {f"event-{index}" for index in range(350)}
    assert client.xpending(stream, "audit")["pending"] == 0
    client.delete(stream)
    client.close()


def test_the_asyncio_consumer_resumes_its_own_pending_events_after_a_crash(redis_server: RedisServer) -> None:
    prefix = f"a{time.time_ns()}"
    stream = RedisNames(prefix).all_events_stream

    async def scenario() -> set[str]:
        client: Any = redis.asyncio.Redis.from_url(redis_server.url)
        sync: Any = redis.Redis.from_url(redis_server.url)
        append(sync, stream, 0, 60)
        seen: list[str] = []

        async def crashing(event: StreamedEvent) -> None:
            if len(seen) == 25:
                raise Crash
            seen.append(event.event["id"])

        with pytest.raises(Crash):
            await aconsume_all_events(client, "svc", "svc-1", crashing, prefix, start="0")
        append(sync, stream, 60, 20)
        stop = asyncio.Event()

        async def handle(event: StreamedEvent) -> None:
            seen.append(event.event["id"])
            if len(set(seen)) == 80:
                stop.set()

        await asyncio.wait_for(
            aconsume_all_events(client, "svc", "svc-1", handle, prefix, start="0", stop=stop), 10
        )
        assert (await client.xpending(stream, "svc"))["pending"] == 0
        await client.delete(stream)
        await client.aclose()
        sync.close()
        return set(seen)

    assert asyncio.run(scenario()) == {f"event-{index}" for index in range(80)}
