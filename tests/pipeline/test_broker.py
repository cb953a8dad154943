"""worker/queueing/broker.py's change to kombu's Redis channel: one client per channel while its pool
lives."""

from __future__ import annotations

import uuid

import kombu
import pytest

from tests.support.stack import RedisServer
from worker.queueing.broker import repair_redis_transport

pytestmark = pytest.mark.integration


def test_a_channel_keeps_one_client_until_kombu_drops_its_pool(redis_server: RedisServer) -> None:
    repair_redis_transport()
    repair_redis_transport()  # a second call changes nothing (celeryconfig made the first)
    queue = f"broker-test-{uuid.uuid4().hex[:8]}"
    with kombu.Connection(redis_server.url) as connection:
        channel = connection.default_channel
        first = channel._create_client()
        with channel.conn_or_acquire() as acquired:
            assert acquired is first
        channel._put(queue, {"body": "one", "properties": {"delivery_tag": "1"}})
        assert channel._create_client() is first
        assert first.llen(queue) == 1

        channel._disconnect_pools()  # what kombu does when it loses the connection
        second = channel._create_client()
        assert second is not first
        assert second.connection_pool is channel.pool
        assert second.llen(queue) == 1
        assert second.delete(queue) == 1
        assert channel._create_client(asynchronous=True) is not second  # the consumer's own, untouched
