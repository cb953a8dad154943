"""The shim's event streams share one pub/sub connection per process: across a Redis restart every open
stream carries on, and reads what was published while it was down from the flow's stream, once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio

from api_shim.streams import flow_messages
from api_shim.subscriptions import SharedSubscriptions
from tests.support.redis_outage import RestartableRedis
from worker.flows.flow import BrowserUI, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(60)]

PREFIX = "shared"
AOF = ["--appendonly", "yes", "--appendfsync", "always"]


@pytest.fixture
def server() -> Iterator[RestartableRedis]:
    restartable = RestartableRedis(AOF)
    yield restartable
    restartable.stop()


def _store(url: str) -> FlowStore:
    return FlowStore(redis.Redis.from_url(url), RedisNames(PREFIX), Lifetimes())


def test_streams_on_one_subscription_carry_on_across_a_redis_restart(server: RestartableRedis) -> None:
    store = _store(server.url)
    flows = [
        store.create(f"{index:040x}", "LinkedIn", "profile", None, None, BrowserUI.REDIRECT)
        for index in (1, 2)
    ]

    async def follow() -> list[list[str]]:
        client = redis.asyncio.Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=1)
        subscriptions = SharedSubscriptions(client)

        async def types(flow_id: str) -> list[str]:
            return [
                str(message.event)
                async for message in flow_messages(subscriptions, PREFIX, flow_id, 0, 30)
                if message.event
            ]

        streams = [asyncio.create_task(types(flow.flow_id)) for flow in flows]
        await asyncio.sleep(0.5)
        assert subscriptions.channels == 2
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        restarted = _store(server.url)
        for flow in flows:  # published while the streams' subscription was reconnecting
            claimed = restarted.get(flow.flow_id)
            assert claimed is not None
            assert restarted.deny(claimed, "the user did not authorize").done
        results = await asyncio.wait_for(asyncio.gather(*streams), 20)
        await subscriptions.close()
        await client.aclose()
        return results

    for types in asyncio.run(follow()):
        assert types == ["authorization.started", "authorization.failed"]
