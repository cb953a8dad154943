"""The webhook dispatcher reads the all-flows stream from a cursor of its own, one worker process at a time:
the turn passes on when its holder stops renewing it, and the cursor moves only past dispatched batches."""

from __future__ import annotations

import pytest

from tests.support.deliveries import PUBLIC_URL, webhooks_of
from tests.support.shim import CALLER, Shim
from worker.webhooks.dispatcher import Dispatcher

pytestmark = pytest.mark.anyio


def _dispatcher(shim: Shim, name: str) -> Dispatcher:
    return Dispatcher(
        shim.store.redis, shim.store.names, webhooks_of(shim), shim.enqueuer.enqueue_delivery, name
    )


async def test_one_process_at_a_time_dispatches_and_the_cursor_moves_past_each_batch(shim: Shim) -> None:
    await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=CALLER)
    flows = [shim.new_flow() for _ in range(3)]
    first, second = _dispatcher(shim, "w1"), _dispatcher(shim, "w2")
    assert first.dispatch_next()
    assert not second.dispatch_next()  # w1 has the turn
    assert len(shim.enqueuer.deliveries) == len(flows)
    last = shim.store.redis.xrevrange(shim.store.names.all_events_stream, count=1)[0][0].decode()
    assert first.take_turn() == last
    assert first.dispatch_next()  # nothing new: nothing queued twice
    assert len(shim.enqueuer.deliveries) == len(flows)
    shim.store.redis.delete(shim.store.names.webhook_dispatcher_turn)  # w1 died: its turn lapsed
    shim.new_flow()
    assert second.dispatch_next()  # w2 carries on from the cursor
    assert len(shim.enqueuer.deliveries) == len(flows) + 1
    assert not first.dispatch_next()


async def test_a_subscribers_consumer_group_on_the_stream_changes_nothing_for_webhooks(shim: Shim) -> None:
    await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=CALLER)
    shim.new_flow()
    stream = shim.store.names.all_events_stream
    redis = shim.store.redis
    redis.xgroup_create(stream, "webhooks", id="0")  # as a subscriber could, then acknowledge all
    entries = redis.xreadgroup("webhooks", "intruder", {stream: ">"}, count=100)[0][1]
    redis.xack(stream, "webhooks", *[entry_id for entry_id, _ in entries])
    assert _dispatcher(shim, "w1").dispatch_next()
    assert len(shim.enqueuer.deliveries) == 1
