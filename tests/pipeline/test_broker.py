"""worker/queueing/broker.py's changes to kombu's Redis transport: one client per channel while its pool
lives, and the flow tasks' messages tracked in memory instead of copied into kombu's unacked hash."""

from __future__ import annotations

import uuid

import kombu
import pytest
import redis

from tests.support.stack import RedisServer
from worker.queueing.broker import repair_redis_transport
from worker.queueing.names import DELIVER_TASK, VERIFY_TASK

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


def _unacked_keys() -> dict[str, str]:
    """kombu's unacked hash and index under names of the test's own."""
    suffix = uuid.uuid4().hex[:8]
    return {"unacked_key": f"unacked-{suffix}", "unacked_index_key": f"unacked-index-{suffix}"}


def test_a_flow_tasks_message_is_tracked_in_memory_and_a_deliverys_copied_to_redis(
    redis_server: RedisServer,
) -> None:
    repair_redis_transport()
    keys = _unacked_keys()
    broker = redis.Redis.from_url(redis_server.url)
    with kombu.Connection(redis_server.url, transport_options=keys) as connection:
        queue = connection.SimpleQueue(f"broker-test-{uuid.uuid4().hex[:8]}")
        queue.consumer.qos(prefetch_count=1)
        queue.put({"flow": 1}, headers={"task": VERIFY_TASK})
        queue.put({"delivery": 1}, headers={"task": DELIVER_TASK})

        flow_task = queue.get(timeout=2)
        assert flow_task.payload == {"flow": 1}
        assert broker.hlen(keys["unacked_key"]) == 0  # no copy: no round trip before the task starts
        assert broker.zcard(keys["unacked_index_key"]) == 0
        assert not connection.default_channel.qos.can_consume()  # the prefetch count still counts it
        flow_task.ack()
        assert connection.default_channel.qos.can_consume()

        delivery = queue.get(timeout=2)
        assert delivery.payload == {"delivery": 1}
        assert broker.hexists(keys["unacked_key"], delivery.delivery_tag)  # kombu's copy, as it ships
        assert broker.zscore(keys["unacked_index_key"], delivery.delivery_tag) is not None
        delivery.ack()
        assert broker.hlen(keys["unacked_key"]) == 0
        assert broker.zcard(keys["unacked_index_key"]) == 0
        queue.clear()
        queue.close()


def test_a_flow_tasks_message_given_back_goes_back_to_its_queue(redis_server: RedisServer) -> None:
    repair_redis_transport()
    keys = _unacked_keys()
    name = f"broker-test-{uuid.uuid4().hex[:8]}"
    broker = redis.Redis.from_url(redis_server.url)
    with kombu.Connection(redis_server.url, transport_options=keys) as connection:
        queue = connection.SimpleQueue(name)
        queue.put({"flow": 1}, headers={"task": VERIFY_TASK})
        rejected = queue.get(timeout=2)
        assert broker.llen(name) == 0
        rejected.reject(requeue=True)  # what Celery does with a task whose worker was lost
        assert broker.llen(name) == 1
        again = queue.get(timeout=2)
        assert again.payload == {"flow": 1}
        assert again.delivery_info["redelivered"] is True
        assert broker.llen(name) == 0
        queue.close()  # the channel closes holding it unacked: kombu gives it back
    assert broker.llen(name) == 1
    with kombu.Connection(redis_server.url, transport_options=keys) as connection:
        queue = connection.SimpleQueue(name)
        assert queue.get(timeout=2).payload == {"flow": 1}
        queue.close()
    assert broker.hlen(keys["unacked_key"]) == 0
    broker.delete(name)
