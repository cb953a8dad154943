"""Delivery attempts on fakeredis with the endpoint on httpx's MockTransport: signatures a Standard
Webhooks library accepts, the retry schedule, fencing of a task run twice, no redirects, and the address
checked again at delivery time."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import fakeredis
import httpx
import pytest
from standardwebhooks import Webhook

from tests.support.deliveries import PUBLIC, URL, Receiver, Setup
from worker.flows.flow import Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.observing.metrics import RedisMetricsCollector, WorkerMetrics
from worker.webhooks.delivery import Courier, Slots
from worker.webhooks.endpoints import Attempt, NoAttempt, WebhookStore


@pytest.fixture
def setup() -> Iterator[Setup]:
    client = fakeredis.FakeRedis()
    names = RedisNames("deliverytest")
    flows = FlowStore(client, names, Lifetimes())
    webhooks = WebhookStore(client, names, 3600, (5.0, 60.0))
    receiver = Receiver()
    addresses = {"hooks.partner.example": [PUBLIC]}

    def resolver(host: str, _port: int) -> list[str]:
        return addresses.get(host, [])

    courier = Courier(
        webhooks,
        WorkerMetrics(client, names.worker_metrics),
        allowed_hosts=[],
        timeout=2.0,
        schedule=(5.0, 60.0),
        slots=Slots(total=4, per_tenant=2),
        transport=httpx.MockTransport(receiver),
        resolver=resolver,
    )
    endpoint = webhooks.create_endpoint("default", URL, [])
    yield Setup(flows, webhooks, receiver, addresses, courier, endpoint, names.worker_metrics)
    courier.close()


def test_a_delivery_is_signed_so_that_a_standard_webhooks_library_accepts_it(setup: Setup) -> None:
    delivery_id, body = setup.delivery_of_new_event()
    assert setup.courier.attempt(delivery_id).outcome == "delivered"
    (request,) = setup.receiver.requests
    assert request.content == body  # the stream's bytes, as they are
    event = json.loads(body)
    headers = dict(request.headers)
    assert Webhook(setup.endpoint.secret).verify(request.content, headers) == event
    assert headers["webhook-id"] == event["id"]
    # connected to the address checked, the host named for HTTP and TLS
    assert request.url.host == PUBLIC
    assert request.url.path == "/oktopost"
    assert request.url.query == b"x=1"
    assert headers["host"] == "hooks.partner.example"
    assert request.extensions["sni_hostname"] == "hooks.partner.example"
    (delivery,) = setup.webhooks.deliveries(setup.endpoint.id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 43).verify(request.content, headers)


def test_failed_attempts_follow_the_schedule_then_the_delivery_fails(setup: Setup) -> None:
    setup.receiver.statuses = [503, 302, 500]
    delivery_id, _ = setup.delivery_of_new_event()
    first = setup.courier.attempt(delivery_id)
    assert (first.outcome, first.again_in) == ("retry", 5.0)
    early = setup.courier.attempt(delivery_id)  # a copy of the task, before the moment: nothing sent
    assert early.outcome == "wait"
    assert 0 < (early.again_in or 0) <= 5.0
    assert len(setup.receiver.requests) == 1
    setup.make_due(delivery_id)
    second = setup.courier.attempt(delivery_id)
    assert (second.outcome, second.again_in) == ("retry", 60.0)  # a redirect is not followed
    assert [request.url.host for request in setup.receiver.requests] == [PUBLIC, PUBLIC]
    setup.make_due(delivery_id)
    assert setup.courier.attempt(delivery_id).outcome == "failed"
    (delivery,) = setup.webhooks.deliveries(setup.endpoint.id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 3, 500)
    assert delivery.next_attempt_at is None
    assert setup.courier.attempt(delivery_id).outcome == "over"
    assert setup.webhooks.oldest_pending() == (0, None)
    metrics = {
        (sample.name, tuple(sample.labels.values())): sample.value
        for family in RedisMetricsCollector(setup.flows.redis, setup.metrics_key).collect()
        for sample in family.samples
    }
    assert metrics[("okc_webhook_deliveries_total", ("failed",))] == 1
    assert metrics[("okc_webhook_attempts_total", ("5xx",))] == 2
    assert metrics[("okc_webhook_attempts_total", ("3xx",))] == 1
    assert metrics[("okc_webhook_attempt_seconds_count", ())] == 3


def test_a_task_run_twice_makes_one_attempt_and_a_lapsed_one_counts_nothing(setup: Setup) -> None:
    delivery_id, _ = setup.delivery_of_new_event()
    taken = setup.webhooks.begin_attempt(delivery_id, lease=30)
    again = setup.webhooks.begin_attempt(delivery_id, lease=30)
    assert isinstance(again, NoAttempt)
    assert again.reason == "busy"
    assert isinstance(taken, Attempt)
    assert setup.courier.attempt(delivery_id).outcome == "busy"
    assert setup.receiver.requests == []
    # the first attempt's lease lapses (its worker was killed); another takes the delivery over
    setup.flows.redis.hset(setup.flows.names.webhook_delivery(delivery_id), "owner_until", 0)
    assert setup.courier.attempt(delivery_id).outcome == "delivered"
    assert setup.webhooks.end_attempt(delivery_id, taken, "retry", 503, 5.0) is None
    (delivery,) = setup.webhooks.deliveries(setup.endpoint.id)
    assert (delivery.status, delivery.attempts) == ("delivered", 1)


def test_an_address_that_turned_private_after_registration_is_not_reached(setup: Setup) -> None:
    delivery_id, _ = setup.delivery_of_new_event()
    setup.addresses["hooks.partner.example"] = ["10.0.0.7"]  # DNS rebinding
    assert setup.courier.attempt(delivery_id).outcome == "retry"
    assert setup.receiver.requests == []
    (delivery,) = setup.webhooks.deliveries(setup.endpoint.id)
    assert (delivery.attempts, delivery.last_status_code) == (1, None)


def test_a_deleted_endpoint_fails_its_deliveries_at_once(setup: Setup) -> None:
    delivery_id, _ = setup.delivery_of_new_event()
    assert setup.webhooks.delete_endpoint(setup.endpoint) == 1
    (delivery,) = setup.webhooks.deliveries(setup.endpoint.id)
    assert delivery.status == "failed"  # at once, not when its task comes
    assert setup.courier.attempt(delivery_id).outcome == "over"
    assert setup.receiver.requests == []


def test_one_tenant_cannot_take_every_slot() -> None:
    slots = Slots(total=3, per_tenant=2)
    assert slots.take("a", "wh_a1")
    assert slots.take("a", "wh_a2")
    assert not slots.take("a", "wh_a3")
    assert slots.take("b", "wh_b1")
    assert not slots.take("c", "wh_c1")
    slots.give_back("a", "wh_a1")
    assert slots.take("c", "wh_c1")


def test_one_endpoint_cannot_take_every_slot_of_its_tenant() -> None:
    slots = Slots(total=4, per_tenant=3)  # a worker of 8 threads serving flows and deliveries
    assert slots.take("a", "wh_slow")
    assert not slots.take("a", "wh_slow")  # not tried here yet: one at a time until an attempt delivers
    slots.give_back("a", "wh_slow", answered=True)
    assert slots.take("a", "wh_slow")
    assert slots.take("a", "wh_slow")
    assert not slots.take("a", "wh_slow")  # the tenant's third slot stays for its other endpoints
    assert slots.take("a", "wh_fast")
    assert not slots.take("a", "wh_other")  # the tenant's three are taken
    slots.give_back("a", "wh_slow")
    assert slots.take("a", "wh_slow")  # one of its two given back: it may take one again
    assert not slots.take("a", "wh_slow")
    lone = Slots(total=1, per_tenant=1)
    assert lone.take("a", "wh_only")  # a tenant of one slot: its endpoint may use it


def test_endpoints_that_hang_leave_slots_to_those_that_answer_in_every_tenant() -> None:
    """A worker of 8 threads: 4 slots, 3 a tenant. Two endpoints of tenant a and one of tenant b time
    out; the endpoints that answer, in a and in b, still find a slot while they hang."""
    slots = Slots(total=4, per_tenant=3)
    for tenant, endpoint in (("a", "wh_dead1"), ("a", "wh_dead2"), ("b", "wh_dead3")):
        assert slots.take(tenant, endpoint)
        slots.give_back(tenant, endpoint, answered=False)  # its first attempt timed out
    assert slots.take("a", "wh_dead1")
    assert not slots.take("a", "wh_dead1")  # a failing endpoint holds one slot at most
    assert slots.take("a", "wh_dead2")
    assert not slots.take("b", "wh_dead3")  # the failing ones hold half the slots at most
    assert slots.take("a", "wh_ok")
    assert slots.take("b", "wh_ok_b")
    slots.give_back("a", "wh_ok", answered=True)
    slots.give_back("a", "wh_dead1", answered=True)  # it answers again: no longer failing
    assert slots.take("a", "wh_dead1")
    assert slots.take("a", "wh_dead1")  # two, as any endpoint that answers
    assert not slots.take("a", "wh_ok")  # the tenant's three are taken
    slots.give_back("a", "wh_dead2", answered=None)  # no attempt was made: still failing
    assert slots.take("b", "wh_dead3")  # the failing ones' slot free again
    assert not slots.take("a", "wh_dead2")  # every slot is taken


def test_slots_remember_a_bounded_number_of_endpoints_forgetting_the_least_recent_without_a_slot() -> None:
    slots = Slots(total=4, per_tenant=3, remembered=3)
    assert slots.take("a", "wh_busy")
    for endpoint in ("wh_old", "wh_mid", "wh_new"):
        assert slots.take("a", endpoint)
        slots.give_back("a", endpoint, answered=False)
    slots.give_back("a", "wh_busy", answered=True)  # heard from last, but the other three are older
    assert slots.take("a", "wh_busy")  # wh_busy holds a slot now
    for endpoint in (f"wh_{n}" for n in range(1000)):  # months of endpoints, each tried once
        assert slots.take("b", endpoint)
        slots.give_back("b", endpoint, answered=True)
    assert len(slots._answered) == 3
    assert slots.take("a", "wh_busy")  # still remembered as answering: its second slot, while it holds one
    assert list(slots._answered) == ["wh_busy", "wh_998", "wh_999"]
    assert slots.take("c", "wh_old")  # forgotten: not yet tried, one slot at most
    assert not slots.take("c", "wh_old")


def test_a_webhook_secret_is_redacted_from_log_lines() -> None:
    from worker.observing.redaction import redact

    secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    assert (
        redact(f"endpoint created with {secret} for tenant") == "endpoint created with whsec_*** for tenant"
    )
