"""A tenant's pending deliveries, counted exactly by the scripts that make and end them, and capped
(WEBHOOK_MAX_PENDING): past the cap its events wait in its event index, none is dropped, and the
dispatcher makes them deliveries as its pending ones end, while another tenant's go on. The event
index per tenant, and replays read from it alone, a window at a time. On fakeredis."""

from __future__ import annotations

import json
import time
from typing import Any

import fakeredis
import pytest

from worker.keys import RedisNames
from worker.webhooks.dispatcher import Dispatcher
from worker.webhooks.endpoints import (
    Attempt,
    BacklogCollector,
    Endpoint,
    PendingLimitReached,
    Replayed,
    WebhookStore,
)

URL = "https://hooks.partner.example/oktopost"
CAP = 3


class Setup:
    def __init__(self, max_pending: int = CAP, replay_max_events: int = 5000) -> None:
        self.client: Any = fakeredis.FakeRedis()
        self.names = RedisNames("captest")
        self.store = WebhookStore(
            self.client,
            self.names,
            3600,
            (5.0,),
            max_pending=max_pending,
            replay_max_events=replay_max_events,
        )
        self.queued: list[str] = []
        self.dispatcher = Dispatcher(self.client, self.names, self.store, self.queued.append, "worker-1")
        self.seq = 0

    def endpoint(self, tenant: str) -> Endpoint:
        endpoint = self.store.create_endpoint(tenant, URL, [])
        time.sleep(0.002)  # events appended after it, to the millisecond
        return endpoint

    def event(self, tenant: str) -> str:
        """One event of `tenant` appended to the all-flows stream; its id."""
        self.seq += 1
        event_id = f"evt_{self.seq}"
        body = {
            "id": event_id,
            "type": "connection.completed",
            "flow_id": f"f{self.seq}",
            "seq": 1,
            "tenant": tenant,
        }
        self.client.xadd(self.names.all_events_stream, {"event": json.dumps(body)})
        return event_id

    def pending(self, tenant: str) -> set[str]:
        return {
            member.decode() for member in self.client.zrange(self.names.webhook_tenant_pending(tenant), 0, -1)
        }

    def dispatch_all(self) -> None:
        """Rounds of the dispatcher until the stream is read and nothing more is made."""
        for _ in range(20):
            before = len(self.queued)
            self.dispatcher.dispatch_next()
            if len(self.queued) == before:
                return

    def deliver(self, delivery_id: str, outcome: str = "delivered") -> None:
        attempt = self.store.begin_attempt(delivery_id, 30.0)
        assert isinstance(attempt, Attempt), attempt
        self.store.end_attempt(delivery_id, attempt, outcome, 200 if outcome == "delivered" else 500, 5.0)


@pytest.fixture
def setup() -> Setup:
    return Setup()


def test_each_path_out_of_pending_takes_the_delivery_out_of_its_tenants_count(setup: Setup) -> None:
    endpoint = setup.endpoint("acme")
    ids = [setup.event("acme") for _ in range(3)]
    setup.dispatch_all()
    made = [f"{endpoint.id}.{event_id}" for event_id in ids]
    assert setup.pending("acme") == set(made)
    setup.deliver(made[0], "retry")  # still pending: still counted
    assert setup.pending("acme") == set(made)
    setup.client.hset(setup.names.webhook_delivery(made[0]), "next_attempt_at", 0)
    setup.deliver(made[0], "delivered")
    setup.deliver(made[1], "failed")
    assert setup.pending("acme") == {made[2]}
    assert setup.store.delete_endpoint(endpoint) == 1
    assert setup.pending("acme") == set()


def test_disabling_an_endpoint_and_an_attempt_on_a_disabled_one_leave_the_count(setup: Setup) -> None:
    first, second = setup.endpoint("acme"), setup.endpoint("acme")
    setup.event("acme")
    setup.dispatch_all()
    assert len(setup.pending("acme")) == 2
    assert setup.store.disable(first, time.time() - 10) == 1
    assert setup.pending("acme") == {f"{second.id}.evt_1"}
    setup.client.hset(
        setup.names.webhook_endpoint(second.id), "status", "disabled"
    )  # by hand: its task finds it
    assert setup.store.begin_attempt(f"{second.id}.evt_1", 30.0).reason == "over"  # type: ignore[union-attr]
    assert setup.pending("acme") == set()


def test_a_delivery_whose_hash_expired_is_found_gone_when_the_count_is_made_true(setup: Setup) -> None:
    endpoint = setup.endpoint("acme")
    setup.event("acme")
    setup.dispatch_all()
    setup.client.delete(
        setup.names.webhook_delivery(f"{endpoint.id}.evt_1")
    )  # expired while its task was lost
    assert setup.store.begin_attempt(f"{endpoint.id}.evt_1", 30.0).reason == "missing"  # type: ignore[union-attr]
    assert setup.store.pending_room("acme") == CAP
    assert setup.pending("acme") == set()


def test_past_the_cap_no_delivery_is_made_and_another_tenant_is_not_held(setup: Setup) -> None:
    flooding, other = setup.endpoint("flood"), setup.endpoint("other")
    for _ in range(CAP):
        setup.event("flood")
    setup.dispatch_all()
    event = {"id": "evt_x", "type": "connection.completed", "tenant": "flood"}
    with pytest.raises(PendingLimitReached):
        setup.store.create_delivery(flooding, event, json.dumps(event).encode())
    setup.event("other")
    setup.dispatch_all()
    assert f"{other.id}.evt_{CAP + 1}" in setup.queued


def test_events_past_the_cap_wait_in_the_index_and_become_deliveries_as_pending_ones_end(
    setup: Setup,
) -> None:
    flooding, other = setup.endpoint("flood"), setup.endpoint("other")
    flood_events = [setup.event("flood") for _ in range(10)]
    other_event = setup.event("other")
    flood_events += [setup.event("flood") for _ in range(2)]
    setup.dispatch_all()
    # the other tenant's event is dispatched in the same round, whatever the flood
    assert f"{other.id}.{other_event}" in setup.queued
    made = [item for item in setup.queued if item.startswith(flooding.id)]
    assert made == [f"{flooding.id}.{event_id}" for event_id in flood_events[:CAP]]
    assert "flood" in setup.store.tenants_behind()
    for _ in range(10):  # the receiver drains: each round, what ended makes room for what waits
        for delivery_id in setup.pending("flood"):
            setup.deliver(delivery_id)
        setup.dispatcher.dispatch_next()
    made = [item for item in setup.queued if item.startswith(flooding.id)]
    assert made == [f"{flooding.id}.{event_id}" for event_id in flood_events]  # each once, in order
    assert setup.store.tenants_behind() == {}
    late = setup.event("flood")  # caught up: dispatched as it comes again
    setup.dispatcher.dispatch_next()
    assert setup.queued[-1] == f"{flooding.id}.{late}"


def test_an_event_cut_off_between_its_endpoints_reaches_the_rest_once_there_is_room() -> None:
    setup = Setup(max_pending=3)
    endpoints = [setup.endpoint("flood") for _ in range(2)]
    first, second = setup.event("flood"), setup.event("flood")
    setup.dispatch_all()
    assert len(setup.queued) == 3  # the second event reached one of its two endpoints
    for delivery_id in list(setup.pending("flood")):
        setup.deliver(delivery_id)
    setup.dispatch_all()
    expected = {f"{endpoint.id}.{event_id}" for endpoint in endpoints for event_id in (first, second)}
    assert set(setup.queued) == expected
    assert len(setup.queued) == 4


def test_every_event_is_indexed_under_its_tenant_once_even_a_tenant_without_endpoints(setup: Setup) -> None:
    setup.endpoint("someone-else")
    ids = [setup.event("acme"), setup.event("other"), setup.event("acme")]
    setup.dispatcher.dispatch_next()
    stream = setup.client.xrange(setup.names.all_events_stream)
    batch_again = [(entry_id.decode(), "acme", fields[b"event"]) for entry_id, fields in stream[:1]]
    setup.store.index_events(batch_again)  # a batch handled again after a crash: not indexed twice
    index = setup.client.xrange(setup.names.tenant_event_index("acme"))
    assert [json.loads(fields[b"event"])["id"] for _, fields in index] == [ids[0], ids[2]]
    assert [entry_id for entry_id, _ in index] == [stream[0][0], stream[2][0]]  # the same positions


def test_a_replay_reads_only_its_tenants_index_a_window_at_a_time() -> None:
    setup = Setup(max_pending=100, replay_max_events=2)
    since = time.time() - 1
    for _ in range(3):
        setup.event("acme")
        setup.event("noisy")
        time.sleep(0.002)
    endpoint = setup.endpoint("acme")  # after the events: only a replay sends them
    setup.dispatcher.dispatch_next()  # indexed (none dispatched: they are older than the endpoint)
    assert setup.queued == []
    setup.client.delete(setup.names.all_events_stream)  # a replay does not read it
    first = setup.store.replay(endpoint, since, setup.queued.append)
    assert first.queued == 2
    assert first.next_since is not None
    rest = setup.store.replay(endpoint, first.next_since, setup.queued.append)
    assert rest == Replayed(3 - first.queued)
    assert setup.queued == [f"{endpoint.id}.evt_{n}" for n in (1, 3, 5)]  # each once


def test_a_replay_stops_at_the_tenants_pending_cap_and_says_where_to_go_on(setup: Setup) -> None:
    since = time.time() - 1
    for _ in range(5):
        setup.event("acme")
    time.sleep(0.002)  # an event of the endpoint's own millisecond would count as newer than it
    endpoint = setup.endpoint("acme")
    setup.dispatcher.dispatch_next()
    replayed = setup.store.replay(endpoint, since, setup.queued.append)
    assert replayed.queued == CAP
    assert replayed.next_since is not None
    assert len(setup.pending("acme")) == CAP


def test_metrics_show_each_tenants_pending_and_how_long_a_held_back_tenant_has_waited(setup: Setup) -> None:
    setup.endpoint("flood")
    setup.endpoint("other")
    for _ in range(CAP + 1):
        setup.event("flood")
    setup.event("other")
    setup.dispatch_all()
    families = {family.name: family for family in BacklogCollector(setup.store).collect()}
    pending = {sample.labels["tenant"]: sample.value for sample in families["okc_webhook_pending"].samples}
    assert pending == {"flood": CAP, "other": 1}
    (held,) = families["okc_webhook_held_back_seconds"].samples
    assert held.labels == {"tenant": "flood"}
    assert 0 <= held.value < 60


def test_a_dispatcher_whose_turn_lapsed_cannot_let_go_of_a_tenants_held_back_events(setup: Setup) -> None:
    setup.endpoint("flood")
    for _ in range(CAP + 2):
        setup.event("flood")
    setup.dispatch_all()
    start = setup.store.tenants_behind()["flood"]
    read_to = setup.client.get(setup.names.webhook_dispatch_cursor).decode()
    setup.event("flood")
    setup.client.delete(setup.names.webhook_dispatcher_turn)  # the turn lapsed: another holder goes on
    other = Dispatcher(setup.client, setup.names, setup.store, setup.queued.append, "worker-2")
    other.take_turn()
    other.dispatch_next()  # passes the new event over: the tenant is held back
    assert not setup.store.caught_up("flood", read_to)  # what the lapsed one read is not the cursor now
    assert setup.store.tenants_behind() == {"flood": start}


def test_while_no_endpoint_exists_nothing_is_read_and_the_first_one_gets_the_events_indexed(
    setup: Setup,
) -> None:
    since = time.time() - 1
    setup.event("acme")
    setup.dispatcher.dispatch_next()
    assert setup.client.get(setup.names.webhook_dispatch_cursor) is None  # the cursor stays
    assert setup.client.exists(setup.names.tenant_event_index("acme")) == 0
    endpoint = setup.endpoint("acme")
    setup.dispatcher.dispatch_next()
    assert setup.queued == []  # older than the endpoint: not sent, but replayable
    assert setup.store.replay(endpoint, since, setup.queued.append) == Replayed(1)
    assert setup.queued == [f"{endpoint.id}.evt_1"]
