"""What keeps webhooks running for years, on fakeredis with the endpoint on httpx's MockTransport: family
filters, secret rotation with two signatures, disabling an endpoint that stays down (one event, its
pending deliveries failed), enabling it again, a flow's events in seq order at each endpoint, a rate per
endpoint shared by every worker, and deliveries listed a page at a time."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fakeredis
import httpx
import pytest
from standardwebhooks import Webhook

from tests.support.deliveries import PUBLIC, Receiver
from worker.follow.consume import StreamedEvent
from worker.keys import RedisNames
from worker.observing.metrics import WorkerMetrics
from worker.webhooks.delivery import Courier, Slots
from worker.webhooks.dispatcher import Dispatcher
from worker.webhooks.endpoints import Endpoint, EndpointChange, NoAttempt, WebhookStore, matches

URL = "https://hooks.partner.example/oktopost"


@dataclass
class Setup:
    redis: Any
    names: RedisNames
    webhooks: WebhookStore
    receiver: Receiver
    courier: Courier
    endpoint: Endpoint

    def event(self, flow_id: str, seq: int, event_type: str = "callback.received") -> tuple[str, bytes]:
        event = {
            "v": 1,
            "id": str(uuid.uuid4()),
            "seq": seq,
            "flow_id": flow_id,
            "type": event_type,
            "tenant": "default",
            "data": {},
        }
        body = json.dumps(event).encode()
        delivery_id = self.webhooks.create_delivery(self.endpoint, event, body)
        assert delivery_id is not None
        return delivery_id, body

    def make_due(self, delivery_id: str) -> None:
        self.redis.hset(self.names.webhook_delivery(delivery_id), "next_attempt_at", 0)

    def status(self, delivery_id: str) -> str:
        return (self.redis.hget(self.names.webhook_delivery(delivery_id), "status") or b"").decode()


def _setup(disable_after: float = 432000.0) -> Setup:
    client = fakeredis.FakeRedis()
    names = RedisNames("operatingtest")
    webhooks = WebhookStore(client, names, 3600, (5.0, 60.0), disable_after=disable_after)
    receiver = Receiver()
    courier = Courier(
        webhooks,
        WorkerMetrics(client, names.worker_metrics),
        allowed_hosts=[],
        timeout=2.0,
        schedule=(5.0, 60.0),
        slots=Slots(total=8, per_tenant=8),
        transport=httpx.MockTransport(receiver),
        resolver=lambda host, _port: [PUBLIC] if host == "hooks.partner.example" else [],
    )
    endpoint = webhooks.create_endpoint("default", URL, [])
    return Setup(client, names, webhooks, receiver, courier, endpoint)


@pytest.fixture
def setup() -> Iterator[Setup]:
    made = _setup()
    yield made
    made.courier.close()


def test_a_family_filter_takes_every_type_of_its_family_and_no_other() -> None:
    assert matches("connection.*", "connection.completed")
    assert matches("connection.*", "connection.invalid")
    assert not matches("connection.*", "authorization.failed")
    assert not matches("connection.*", "connectionx.completed")
    assert matches("authorization.failed", "authorization.failed")
    assert not matches("authorization.failed", "authorization.expired")


def test_after_a_rotation_both_secrets_verify_until_the_overlap_ends(setup: Setup) -> None:
    old = setup.endpoint.secret
    new = setup.webhooks.rotate_secret(setup.endpoint, overlap=3600)
    assert new is not None
    assert new != old
    assert new.startswith("whsec_")
    delivery_id, body = setup.event("flow-a", 1)
    assert setup.courier.attempt(delivery_id).outcome == "delivered"
    (request,) = setup.receiver.requests
    headers = dict(request.headers)
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert all(part.startswith("v1,") for part in signatures)
    assert Webhook(new).verify(request.content, headers) == json.loads(body)  # the new first
    assert Webhook(old).verify(request.content, headers) == json.loads(body)
    assert Webhook(new).sign(headers["webhook-id"], _moment(headers), body.decode()) == signatures[0]


def test_once_the_overlap_is_over_only_the_new_secret_signs(setup: Setup) -> None:
    old = setup.endpoint.secret
    new = setup.webhooks.rotate_secret(setup.endpoint, overlap=0)
    assert new is not None
    delivery_id, body = setup.event("flow-a", 1)
    assert setup.courier.attempt(delivery_id).outcome == "delivered"
    headers = dict(setup.receiver.requests[0].headers)
    assert len(headers["webhook-signature"].split(" ")) == 1
    assert Webhook(new).verify(body, headers) == json.loads(body)
    with pytest.raises(Exception, match="signature"):
        Webhook(old).verify(body, headers)


def test_a_flows_later_event_waits_for_its_earlier_one_and_other_flows_go_on(setup: Setup) -> None:
    setup.receiver.statuses = [503, 200]
    first, _ = setup.event("flow-a", 1)
    second, _ = setup.event("flow-a", 2)
    other, _ = setup.event("flow-b", 1)
    assert setup.courier.attempt(first).outcome == "retry"  # its first attempt failed
    held = setup.courier.attempt(second)
    assert held.outcome == "held"
    assert held.again_in is None
    assert setup.courier.attempt(other).outcome == "delivered"  # another flow is not held up
    setup.make_due(first)
    done = setup.courier.attempt(first)
    assert (done.outcome, done.successor) == ("delivered", second)  # its end hands the turn on
    assert setup.courier.attempt(second).outcome == "delivered"
    sent = setup.receiver.event_ids()
    first_id = json.loads(setup.redis.hget(setup.names.webhook_delivery(first), "body"))["id"]
    second_id = json.loads(setup.redis.hget(setup.names.webhook_delivery(second), "body"))["id"]
    assert sent.index(second_id) > max(i for i, event_id in enumerate(sent) if event_id == first_id)


def test_an_event_that_failed_for_good_lets_the_next_one_go() -> None:
    made = _setup()
    made.courier.schedule = ()  # no retries: the first attempt's failure is final
    made.receiver.statuses = [500, 200]
    first, _ = made.event("flow-a", 1)
    second, _ = made.event("flow-a", 2)
    ended = made.courier.attempt(first)
    assert (ended.outcome, ended.successor) == ("failed", second)
    assert made.courier.attempt(second).outcome == "delivered"
    made.courier.close()


def test_the_endpoints_rate_holds_attempts_back_and_drops_none(setup: Setup) -> None:
    limited = setup.webhooks.update_endpoint(setup.endpoint, EndpointChange(rate_limit="2/minute"))
    assert limited is not None
    assert limited.rate_limit == "2/minute"
    deliveries = [setup.event(f"flow-{index}", 1)[0] for index in range(3)]
    outcomes = [setup.courier.attempt(delivery_id) for delivery_id in deliveries]
    assert [outcome.outcome for outcome in outcomes] == ["delivered", "delivered", "rate"]
    assert 0 < (outcomes[2].again_in or 0) <= 60
    assert len(setup.receiver.requests) == 2
    assert setup.status(deliveries[2]) == "pending"  # waiting, not dropped
    unlimited = setup.webhooks.update_endpoint(setup.endpoint, EndpointChange(rate_limit=""))
    assert unlimited is not None
    assert unlimited.rate_limit == ""
    assert setup.courier.attempt(deliveries[2]).outcome == "delivered"


def test_an_endpoint_failing_too_long_is_disabled_once_and_its_pending_deliveries_fail() -> None:
    made = _setup(disable_after=0)
    other = made.webhooks.create_endpoint("default", URL + "/other", ["webhook.*"])
    made.receiver.statuses = [503]
    first, _ = made.event("flow-a", 1)
    waiting, _ = made.event("flow-b", 1)
    assert made.courier.attempt(first).outcome == "retry"
    endpoint = made.webhooks.endpoint(made.endpoint.id)
    assert endpoint is not None
    assert not endpoint.enabled
    assert endpoint.disabled_at is not None
    assert made.status(first) == "failed"
    assert made.status(waiting) == "failed"
    assert made.courier.attempt(waiting).outcome == "over"  # no attempt once disabled
    entries = made.redis.xrange(made.names.all_events_stream)
    events = [json.loads(fields[b"event"]) for _, fields in entries]
    assert [event["type"] for event in events] == ["webhook.disabled"]
    (disabled,) = events
    assert set(disabled) == {"v", "id", "type", "at", "tenant", "data"}
    assert disabled["data"]["endpoint_id"] == made.endpoint.id
    assert disabled["data"]["url"] == URL
    assert disabled["data"]["failing_since"].endswith("Z")
    assert made.webhooks.disable(endpoint, 0.0) is None  # a second ask changes nothing, emits nothing
    assert len(made.redis.xrange(made.names.all_events_stream)) == 1
    # the dispatcher tells the tenant's other endpoints, never the disabled one
    queued: list[str] = []
    dispatcher = Dispatcher(made.redis, made.names, made.webhooks, queued.append, "c1")
    entry_id, fields = entries[0]
    dispatcher.dispatch([StreamedEvent(entry_id.decode(), fields[b"event"])])
    assert [delivery_id.partition(".")[0] for delivery_id in queued] == [other.id]
    made.courier.close()


def test_enabling_again_starts_the_streak_anew_and_new_events_flow(setup: Setup) -> None:
    setup.webhooks.disable(setup.endpoint, 0.0)
    endpoint = setup.webhooks.endpoint(setup.endpoint.id)
    assert endpoint is not None
    assert not endpoint.enabled
    assert setup.webhooks.enable(endpoint)
    enabled = setup.webhooks.endpoint(setup.endpoint.id)
    assert enabled is not None
    assert enabled.enabled
    assert enabled.failing_since is None
    delivery_id, _ = setup.event("flow-a", 1)
    assert setup.courier.attempt(delivery_id).outcome == "delivered"


def test_deliveries_page_with_a_cursor_each_once_most_recent_first(setup: Setup) -> None:
    made = [setup.event(f"flow-{index}", 1)[0] for index in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = setup.webhooks.deliveries_page(setup.endpoint.id, 3, cursor)
        seen += [delivery.id for delivery in page]
        pages += 1
        setup.event("flow-new", pages)  # created meanwhile: on no later page
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(made))
    with pytest.raises(ValueError, match="cursor"):
        setup.webhooks.deliveries_page(setup.endpoint.id, 3, "not-a-cursor")


def test_a_delivery_whose_hash_is_gone_leaves_the_listing(setup: Setup) -> None:
    kept, _ = setup.event("flow-a", 1)
    gone, _ = setup.event("flow-b", 1)
    setup.redis.delete(setup.names.webhook_delivery(gone))  # its retention ended
    page, _ = setup.webhooks.deliveries_page(setup.endpoint.id, 10)
    assert [delivery.id for delivery in page] == [kept]
    assert setup.redis.zrange(setup.names.webhook_deliveries(setup.endpoint.id), 0, -1) == [kept.encode()]


def test_a_page_is_not_left_short_by_deliveries_whose_retention_is_over(setup: Setup) -> None:
    """The oldest deliveries' hashes expire before their entries in the listing do: a page reads past
    them, to `limit` deliveries that are still there."""
    kept = [setup.event(f"flow-old-{index}", 1)[0] for index in range(3)]
    gone = [setup.event(f"flow-{index}", 1)[0] for index in range(12)]
    for delivery_id in gone:
        setup.redis.delete(setup.names.webhook_delivery(delivery_id))  # their retention ended
    newest = setup.event("flow-new", 1)[0]
    page, cursor = setup.webhooks.deliveries_page(setup.endpoint.id, 3)
    assert [delivery.id for delivery in page] == [newest, kept[2], kept[1]]
    assert cursor is not None
    page, cursor = setup.webhooks.deliveries_page(setup.endpoint.id, 3, cursor)
    assert [delivery.id for delivery in page] == [kept[0]]
    assert cursor is None
    listed = setup.redis.zrange(setup.names.webhook_deliveries(setup.endpoint.id), 0, -1)
    assert sorted(listed) == sorted(delivery_id.encode() for delivery_id in [*kept, newest])


def test_a_held_delivery_is_not_missed_when_its_predecessor_vanishes(setup: Setup) -> None:
    first, _ = setup.event("flow-a", 1)
    second, _ = setup.event("flow-a", 2)
    assert isinstance(setup.webhooks.begin_attempt(second, 5.0), NoAttempt)
    setup.redis.delete(setup.names.webhook_delivery(first))  # expired, never ended
    assert setup.courier.attempt(second).outcome == "delivered"


def _moment(headers: dict[str, str]) -> datetime:
    return datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
