"""What a delivery attempt may hold, and for how long: one deadline for the whole attempt (DNS to the
answer's headers), slots per tenant in a process and per endpoint across workers, and the waits of a
delivery that finds none. Fakeredis, with a real socket where the receiver's pace matters."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import fakeredis
import httpx
import pytest

from tests.support.deliveries import PUBLIC, URL, Receiver, Setup
from worker.flows.flow import Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.observing.metrics import WorkerMetrics
from worker.webhooks import delivery as delivery_module
from worker.webhooks.delivery import ENDPOINT_IN_FLIGHT, Courier, Slots
from worker.webhooks.endpoints import Attempt, WebhookStore
from worker.webhooks.urls import RefusedUrl, checked_target, target_of


def _setup(slots: Slots, timeout: float = 2.0, **courier: Any) -> Setup:
    client = fakeredis.FakeRedis()
    names = RedisNames("boundstest")
    flows = FlowStore(client, names, Lifetimes())
    webhooks = WebhookStore(client, names, 3600, (5.0, 60.0))
    receiver = Receiver()
    addresses = {"hooks.partner.example": [PUBLIC]}
    options: dict[str, Any] = {
        "allowed_hosts": [],
        "transport": httpx.MockTransport(receiver),
        "resolver": lambda host, _port: addresses.get(host, []),
    }
    options.update(courier)
    sender = Courier(
        webhooks,
        WorkerMetrics(client, names.worker_metrics),
        timeout=timeout,
        schedule=(5.0, 60.0),
        slots=slots,
        **options,
    )
    endpoint = webhooks.create_endpoint("default", URL, [])
    return Setup(flows, webhooks, receiver, addresses, sender, endpoint, names.worker_metrics)


def new_delivery(setup: Setup, number: int) -> str:
    """A delivery of a new event of a new flow (numbered: several may be made before any is sent)."""
    setup.flows.create(f"{number:040x}", "LinkedIn", "profile", "ref", None)
    _, fields = setup.flows.redis.xrange(setup.flows.names.all_events_stream)[-1]
    delivery_id = setup.webhooks.create_delivery(
        setup.endpoint, json.loads(fields[b"event"]), fields[b"event"]
    )
    assert delivery_id is not None
    return delivery_id


def delivery_at_another_endpoint(setup: Setup, tenant: str, event_id: str) -> str:
    """A delivery of a new event to a new endpoint of `tenant` (beside the setup's own)."""
    endpoint = setup.webhooks.create_endpoint(tenant, URL, [])
    event = {"id": event_id, "type": "connection.completed"} | (
        {"tenant": tenant} if tenant != "default" else {}
    )
    delivery_id = setup.webhooks.create_delivery(endpoint, event, json.dumps(event).encode())
    assert delivery_id is not None
    return delivery_id


@pytest.fixture
def setup() -> Iterator[Setup]:
    made = _setup(Slots(total=4, per_tenant=3))
    yield made
    made.courier.close()


def test_a_delivery_not_due_yet_answers_its_wait_even_when_every_slot_is_held(setup: Setup) -> None:
    setup.receiver.statuses = [503]
    delivery_id, _ = setup.delivery_of_new_event()
    assert setup.courier.attempt(delivery_id).outcome == "retry"  # next attempt in 5 s
    for holder in "abcd":  # hanging attempts hold every slot of this process
        assert setup.courier.slots.take(holder, f"wh_{holder}")
    later = setup.courier.attempt(delivery_id)
    assert later.outcome == "wait"  # not "deferred" and polled every second
    assert 4.0 < (later.again_in or 0) <= 5.0


def test_due_deliveries_without_a_slot_come_back_one_after_another_not_every_second(setup: Setup) -> None:
    ids = [new_delivery(setup, 200 + number) for number in range(40)]
    # an attempt of this endpoint (not yet tried here: one at a time) hangs: its own limit is reached
    assert setup.courier.slots.take("default", setup.endpoint.id)
    waits = []
    for delivery_id in ids:
        answer = setup.courier.attempt(delivery_id)
        assert answer.outcome == "deferred"
        waits.append(answer.again_in or 0)
    # turns spaced by the time an attempt may take over the endpoint's attempts at once (2 s / 4), jittered
    assert all(later > earlier for earlier, later in itertools.pairwise(waits))
    assert 0.4 * 40 <= waits[-1] <= 0.6 * 40
    assert len({round(b - a, 3) for a, b in itertools.pairwise(waits)}) > 1
    # a copy of a task (queued again, redelivered) that comes before the turn ends: the turn's task comes
    copy = setup.courier.attempt(ids[-1])
    assert (copy.outcome, copy.again_in) == ("copy", None)
    # the dispatcher does not take any for lost meanwhile
    last_due = setup.flows.redis.zscore(setup.flows.names.webhook_due, ids[-1])
    assert last_due > float(setup.flows.redis.time()[0]) + waits[-1]
    assert setup.receiver.requests == []


def test_one_tenant_holds_at_most_three_quarters_of_a_process_slots(setup: Setup) -> None:
    first, _ = setup.delivery_of_new_event()
    for holder in "abc":  # three attempts of this tenant hang
        assert setup.courier.slots.take("default", f"wh_{holder}")
    assert setup.courier.attempt(first).outcome == "deferred"
    delivery_id = delivery_at_another_endpoint(setup, "other-tenant", "evt_other")
    assert setup.courier.attempt(delivery_id).outcome == "delivered"


def test_deliveries_held_back_by_other_endpoints_look_again_soon_one_after_another(setup: Setup) -> None:
    ids = [new_delivery(setup, 500 + number) for number in range(10)]
    for holder in "abcd":  # other endpoints' hanging attempts hold every slot of this process
        assert setup.courier.slots.take(holder, f"wh_{holder}")
    waits = [setup.courier.attempt(delivery_id).again_in or 0 for delivery_id in ids]
    # turns spaced by a twentieth of the timeout (2 s / 20), jittered: no backlog builds behind others
    assert all(later > earlier for earlier, later in itertools.pairwise(waits))
    assert 0.08 * 10 <= waits[-1] <= 0.12 * 10 + 0.05


def test_a_slow_endpoint_leaves_its_tenant_a_slot_for_its_other_endpoints(setup: Setup) -> None:
    slow = new_delivery(setup, 300)
    slots = setup.courier.slots
    assert slots.take("default", setup.endpoint.id)
    slots.give_back("default", setup.endpoint.id, answered=True)  # it answers: two at a time from now
    for _ in range(2):  # two attempts to this endpoint hang in this process
        assert setup.courier.slots.take("default", setup.endpoint.id)
    assert setup.courier.attempt(slow).outcome == "deferred"  # the tenant's third slot is not its
    beside = delivery_at_another_endpoint(setup, "default", "evt_beside_the_slow_one")
    assert setup.courier.attempt(beside).outcome == "delivered"


def test_endpoints_whose_attempts_hang_leave_the_endpoints_that_answer_a_slot(setup: Setup) -> None:
    """An audit's case: two endpoints of the tenant and one of another tenant time out, each attempt
    holding its slot for the whole timeout; an endpoint that answers is still delivered to at once."""
    slots = setup.courier.slots
    setup.receiver.statuses = [503, 200]
    refused_quickly = new_delivery(setup, 399)
    assert setup.courier.attempt(refused_quickly).outcome == "retry"  # a quick 503: it answers
    assert slots.take("default", setup.endpoint.id)
    assert slots.take("default", setup.endpoint.id)  # two at a time, as an endpoint that answers
    for _ in range(2):
        slots.give_back("default", setup.endpoint.id, answered=None)
    setup.receiver.statuses = [503, 200]
    setup.receiver.delays = [1.1]  # past half the 2 s timeout: as good as hanging
    failed_once = new_delivery(setup, 400)
    assert setup.courier.attempt(failed_once).outcome == "retry"  # this endpoint now counts as failing
    assert slots.take("default", setup.endpoint.id)  # its next attempt, hanging
    assert not slots.take("default", setup.endpoint.id)  # failing: one at a time
    dead = setup.webhooks.create_endpoint("default", URL, [])
    for tenant, endpoint in (("default", dead.id), ("other-tenant", "wh_dead_other")):
        assert slots.take(tenant, endpoint)
        slots.give_back(tenant, endpoint, answered=False)  # its attempt timed out
    assert slots.take("default", dead.id)  # two failing endpoints hang: half the slots
    assert not slots.take("other-tenant", "wh_dead_other")  # a third waits
    beside = delivery_at_another_endpoint(setup, "default", "evt_beside_the_dead_ones")
    assert setup.courier.attempt(beside).outcome == "delivered"
    elsewhere = delivery_at_another_endpoint(setup, "other-tenant", "evt_other_tenant")
    assert setup.courier.attempt(elsewhere).outcome == "delivered"


def test_an_endpoint_gets_a_bounded_number_of_attempts_at_once_across_workers(setup: Setup) -> None:
    ids = [new_delivery(setup, 100 + number) for number in range(ENDPOINT_IN_FLIGHT + 1)]
    # other workers' attempts to the same endpoint, hanging
    for delivery_id in ids[:ENDPOINT_IN_FLIGHT]:
        assert isinstance(setup.webhooks.begin_attempt(delivery_id, 30, ENDPOINT_IN_FLIGHT), Attempt)
    assert setup.courier.attempt(ids[-1]).outcome == "deferred"
    assert setup.receiver.requests == []
    elsewhere = delivery_at_another_endpoint(setup, "default", "evt_elsewhere")
    assert setup.courier.attempt(elsewhere).outcome == "delivered"  # another endpoint is not held up
    # an attempt that ends gives its place back
    setup.flows.redis.zremrangebyrank(setup.flows.names.webhook_in_flight(setup.endpoint.id), 0, 0)
    setup.make_due(ids[-1])
    assert setup.courier.attempt(ids[-1]).outcome == "delivered"


def test_an_attempt_that_ends_hands_its_place_to_the_first_waiting_delivery(setup: Setup) -> None:
    """A backlog at an endpoint that answers at once drains as fast as it answers: each attempt's end
    makes the next waiting delivery's turn now, for its task to be queued at once, instead of each
    waiting for a turn a share of the timeout after the one before."""
    ids = [new_delivery(setup, 300 + number) for number in range(ENDPOINT_IN_FLIGHT + 6)]
    hanging = ids[:ENDPOINT_IN_FLIGHT]  # other workers' attempts fill the endpoint
    attempts = [setup.webhooks.begin_attempt(delivery_id, 30, ENDPOINT_IN_FLIGHT) for delivery_id in hanging]
    waiting = ids[ENDPOINT_IN_FLIGHT:]
    turns = [setup.courier.attempt(delivery_id) for delivery_id in waiting]
    assert [turn.outcome for turn in turns] == ["deferred"] * len(waiting)
    assert (turns[-1].again_in or 0) > 2.0  # six turns behind one another, half a second apart
    first = attempts[0]
    assert isinstance(first, Attempt)
    ended = setup.webhooks.end_attempt(hanging[0], first, "delivered", 204)
    assert ended is not None
    assert ended.waiting == waiting[0]
    handed = ended.waiting
    delivered = []
    while handed:  # each task queued at once by the attempt before it
        result = setup.courier.attempt(handed)
        assert result.outcome == "delivered", result
        delivered.append(handed)
        handed = result.waiting
    assert delivered == waiting
    # a task that comes at the turn it was first given finds its delivery done
    assert setup.courier.attempt(waiting[-1]).outcome == "over"


def test_attempts_that_end_together_hand_their_places_to_two_deliveries(setup: Setup) -> None:
    ids = [new_delivery(setup, 400 + number) for number in range(ENDPOINT_IN_FLIGHT + 2)]
    hanging, waiting = ids[:ENDPOINT_IN_FLIGHT], ids[ENDPOINT_IN_FLIGHT:]
    attempts = [setup.webhooks.begin_attempt(delivery_id, 30, ENDPOINT_IN_FLIGHT) for delivery_id in hanging]
    assert [setup.courier.attempt(delivery_id).outcome for delivery_id in waiting] == ["deferred"] * 2
    ends = []
    for delivery_id, attempt in zip(hanging[:2], attempts[:2], strict=True):
        assert isinstance(attempt, Attempt)
        ended = setup.webhooks.end_attempt(delivery_id, attempt, "delivered", 204)
        assert ended is not None
        ends.append(ended.waiting)
    assert ends == waiting  # before either handed task began: one place each
    assert [setup.courier.attempt(delivery_id).outcome for delivery_id in ends] == ["delivered"] * 2


def test_a_hand_off_passes_over_a_delivery_held_behind_its_flow_or_failed_meanwhile(setup: Setup) -> None:
    """A waiting delivery that cannot take the place (its flow's earlier event is still retried, or it
    was failed by a disable) leaves the waiting set and is passed over: it would take every hand-off."""

    def delivery_of_the_last_event() -> str:
        _, fields = setup.flows.redis.xrange(setup.flows.names.all_events_stream)[-1]
        delivery_id = setup.webhooks.create_delivery(
            setup.endpoint, json.loads(fields[b"event"]), fields[b"event"]
        )
        assert delivery_id is not None
        return delivery_id

    setup.receiver.statuses = [503]
    flow = setup.flows.create("b" * 40, "LinkedIn", "profile", "ref", None)
    assert setup.courier.attempt(delivery_of_the_last_event()).outcome == "retry"  # its next event waits
    setup.receiver.statuses = [200]
    assert setup.flows.claim_callback(flow, "okt-token-held").done
    held = delivery_of_the_last_event()
    failed, ready, *ending = [new_delivery(setup, 500 + number) for number in range(4)]
    for holder in "abcd":  # this process's slots are all taken a moment: the three wait for turns
        assert setup.courier.slots.take(holder, f"wh_{holder}")
    assert [setup.courier.attempt(d).outcome for d in (held, failed, ready)] == ["deferred"] * 3
    for holder in "abcd":
        setup.courier.slots.give_back(holder, f"wh_{holder}", True)
    setup.flows.redis.hset(setup.flows.names.webhook_delivery(failed), "status", "failed")
    handed = setup.courier.attempt(ending[0])
    assert (handed.outcome, handed.waiting) == ("delivered", ready)
    waiting = setup.flows.redis.zrange(setup.flows.names.webhook_waiting(setup.endpoint.id), 0, -1)
    assert waiting == []  # the held and the failed ones left with it: they hold no later hand-off


def test_a_late_2xx_of_an_attempt_whose_lease_lapsed_is_counted_while_the_delivery_is_pending(
    setup: Setup,
) -> None:
    delivery_id, _ = setup.delivery_of_new_event()
    first = setup.webhooks.begin_attempt(delivery_id, lease=30)
    assert isinstance(first, Attempt)
    setup.flows.redis.hset(setup.flows.names.webhook_delivery(delivery_id), "owner_until", 0)  # it stalled
    second = setup.webhooks.begin_attempt(delivery_id, lease=30)
    assert isinstance(second, Attempt)
    ended = setup.webhooks.end_attempt(delivery_id, first, "delivered", 200)
    assert ended is not None
    assert ended.attempts == 1
    assert setup.webhooks.end_attempt(delivery_id, second, "retry", 503, 5.0) is None
    (delivery,) = setup.webhooks.deliveries(setup.endpoint.id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    assert setup.webhooks.oldest_pending() == (0, None)


def test_a_delivery_gone_from_redis_leaves_the_pending_set(setup: Setup) -> None:
    delivery_id, _ = setup.delivery_of_new_event()
    setup.flows.redis.delete(setup.flows.names.webhook_delivery(delivery_id))  # its hash expired
    assert setup.webhooks.oldest_pending()[0] == 1
    assert setup.courier.attempt(delivery_id).outcome == "missing"
    assert setup.webhooks.oldest_pending() == (0, None)
    assert setup.flows.redis.zscore(setup.flows.names.webhook_due, delivery_id) is None


def test_the_webhook_timestamp_is_redis_time_not_the_worker_clock(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    class SkewedClock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:  # this worker's clock runs ten minutes fast
            return datetime.fromtimestamp(time.time() + 600, tz)

    monkeypatch.setattr(delivery_module, "datetime", SkewedClock)
    delivery_id, _ = setup.delivery_of_new_event()
    assert setup.courier.attempt(delivery_id).outcome == "delivered"
    (request,) = setup.receiver.requests
    redis_now = float(setup.flows.redis.time()[0])
    assert abs(int(request.headers["webhook-timestamp"]) - redis_now) <= 2


def test_an_endpoint_created_while_events_are_dispatched_is_younger_than_every_event_it_missed() -> None:
    """An event handled by the dispatcher before the endpoint's save is older than the endpoint's
    `created_at`, so the promise "every event from its creation on" holds."""
    client: Any = fakeredis.FakeRedis()
    names = RedisNames("createdtest")
    store = WebhookStore(client, names, 3600, (5.0,))
    save = store._save
    appended: list[float] = []

    def racing_save(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.003)
        entry = client.xadd(names.all_events_stream, {"event": "{}"})
        appended.append(int(entry.decode().split("-")[0]) / 1000)
        time.sleep(0.003)
        return save(*args, **kwargs)

    store._save = racing_save  # type: ignore[assignment]
    endpoint = store.create_endpoint("default", URL, [])
    assert endpoint.created_at > appended[0]
    assert store.endpoint(endpoint.id) == endpoint


class DrippingReceiver:
    """A receiver on a real socket that answers its status line one byte every `pace` seconds."""

    def __init__(self, pace: float) -> None:
        self.pace = pace
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                    if self.stop.wait(self.pace):
                        return
                    try:
                        connection.sendall(bytes([byte]))
                    except OSError:
                        break

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()


def test_a_receiver_dripping_its_answer_cannot_hold_an_attempt_past_the_timeout() -> None:
    receiver = DrippingReceiver(pace=0.1)  # 38 bytes: 3.8 s, each read well within the timeout
    setup = _setup(
        Slots(total=4, per_tenant=3),
        timeout=1.0,
        allowed_hosts=["127.0.0.1"],
        transport=None,
        resolver=lambda host, _port: [host],
    )
    try:
        endpoint = setup.webhooks.create_endpoint("default", f"http://127.0.0.1:{receiver.port}/hook", [])
        setup.endpoint = endpoint
        delivery_id, _ = setup.delivery_of_new_event()
        started = time.monotonic()
        answer = setup.courier.attempt(delivery_id)
        took = time.monotonic() - started
    finally:
        setup.courier.close()
        receiver.close()
    assert answer.outcome == "retry"
    assert 0.9 < took < 2.0  # the receiver was waited for, up to the timeout and no longer
    (delivery,) = setup.webhooks.deliveries(endpoint.id)
    assert (delivery.attempts, delivery.last_status_code) == (1, None)  # a timeout


def test_a_dns_lookup_that_hangs_ends_within_the_attempt() -> None:
    def hanging(_host: str, _port: int) -> list[str]:
        time.sleep(3)
        return [PUBLIC]

    setup = _setup(Slots(total=4, per_tenant=3), timeout=0.5, resolver=hanging)
    try:
        delivery_id, _ = setup.delivery_of_new_event()
        started = time.monotonic()
        assert setup.courier.attempt(delivery_id).outcome == "retry"
        assert time.monotonic() - started < 1.5
    finally:
        setup.courier.close()
    assert setup.receiver.requests == []
    with pytest.raises(RefusedUrl, match="in time"):
        target_of(URL, [], hanging, timeout=0.2)


def test_registering_an_endpoint_looks_its_host_up_outside_the_request_threads() -> None:
    threads: list[str] = []

    def recording(_host: str, _port: int) -> list[str]:
        threads.append(threading.current_thread().name)
        return [PUBLIC]

    target = asyncio.run(checked_target(URL, [], recording))
    assert target.address == PUBLIC
    assert threads[0].startswith("webhook-dns")

    def hanging(_host: str, _port: int) -> list[str]:
        time.sleep(2)
        return [PUBLIC]

    started = time.monotonic()
    with pytest.raises(RefusedUrl, match="in time"):
        asyncio.run(checked_target(URL, [], hanging, timeout=0.2))
    assert time.monotonic() - started < 1.0
