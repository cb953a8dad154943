"""The dispatcher: turns every event of the all-flows stream into one delivery per endpoint of the event's
tenant that wants its type, and queues each delivery's task (whose only argument is the delivery's id).

It runs as a thread in every worker process that serves deliveries; one of them at a time has the turn
(scripts/dispatcher_turn.lua) and reads the stream from a cursor kept in an internal key, moved past a
batch once its deliveries exist and their tasks are queued. Not a consumer group: the stream is public,
and a subscriber's XACK on a group of ours would make events vanish. A process that dies lets its turn
lapse within TURN_SECONDS and another carries on from the cursor; making a delivery is idempotent by
(endpoint, event), so an event handled twice is delivered once.

Every event read also goes into its tenant's event index (a stream per tenant, under the same entry id
as in the all-flows stream), before any delivery is made of it: replays read that index alone, and the
dispatcher comes back to it for a tenant held at its cap. Kept here, off the flows' hot path (the
transition script writes the all-flows stream only); the cursor is the index's too, so events appended
while no dispatcher runs are indexed once one starts, before they are dispatched. While no tenant has an
endpoint it reads nothing and the cursor stays, so webhooks cost the flows nothing until they are used;
the first endpoint's creation makes it index what the stream holds since (a day at most).

A tenant with WEBHOOK_MAX_PENDING deliveries pending gets no more made: from the event that found no
room on, its events wait in its index (the cursor moves on, so other tenants' events are dispatched as
they come) and are made deliveries, in order, as its pending ones end (`catch_up`); then its events are
dispatched as they come again. Nothing is dropped, unless it waits longer than the index keeps events
(FLOW_RETENTION_SECONDS; okc_webhook_held_back_seconds and its alert say so long before). A second
thread queues again the task of a delivery that should have shown up long ago (lost with a killed
worker, or held by one): the attempt itself is fenced, so a duplicate task sends nothing twice. An
entry that is not an event (it cannot be parsed) is logged and passed over, never read again and again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis

from worker import scripts
from worker.events import DEFAULT_TENANT
from worker.follow.consume import StreamedEvent
from worker.keys import RedisNames
from worker.replies import text
from worker.threads import BackgroundThreads
from worker.webhooks.endpoints import Endpoint, PendingLimitReached, WebhookStore, deliverable

log = logging.getLogger(__name__)

TURN_SECONDS = 10.0  # handling a batch takes milliseconds: a turn not renewed this long lost its worker
BATCH = 100  # stream entries read at a time
READ_SECONDS = 1.0  # how long one read waits for new entries, so that a stop is noticed
CATCH_UP_SECONDS = 0.1  # how long it waits instead while a tenant's events wait for room
LATE_SECONDS = 5.0  # a delivery's task this late (after its moment, or after its attempt's lease) is lost
REQUEUE_EVERY_SECONDS = 1.0


class Dispatcher(BackgroundThreads):
    def __init__(
        self,
        client: redis.Redis,
        names: RedisNames,
        store: WebhookStore,
        enqueue: Callable[[str], object],
        consumer: str,
        *,
        grace: float = 60.0,
    ) -> None:
        self.redis = client
        self.names = names
        self.store = store
        self.enqueue = enqueue
        self.consumer = consumer
        self.grace = grace  # seconds a queued-again task gets before it is queued again
        self._turn = scripts.register(client, "dispatcher_turn")
        self._behind = False  # some tenant's events wait for room: look again soon
        super().__init__({"oktopost-webhooks": self._consume, "oktopost-webhooks-requeue": self._requeue})

    def dispatch(self, batch: list[StreamedEvent]) -> list[str]:
        """The deliveries of a batch of events, made and queued; returns the entry ids handled (all of
        them, or the exception propagates and the batch is read again). Every event goes into its
        tenant's event index first (so it is there before any replay or catching up could need it).
        Endpoints are read once per tenant per batch, after the batch was read: every endpoint created
        before an event was appended is seen. A tenant with WEBHOOK_MAX_PENDING deliveries pending gets
        none made: its events from there on wait in its index (`catch_up`)."""
        events = [(streamed, event) for streamed in batch if (event := _event_of(streamed)) is not None]
        self.store.index_events(
            [(streamed.entry_id, _tenant(event), streamed.body) for streamed, event in events]
        )
        oldest = self.store.oldest_endpoint_created()
        if oldest is not None:
            behind = self.store.tenants_behind()
            fan_out = FanOut(self.store, self.enqueue)
            for streamed, event in events:
                tenant = _tenant(event)
                if _appended_at(streamed.entry_id) < oldest or tenant in behind:
                    continue
                if not fan_out(tenant, event, streamed):
                    behind[tenant] = streamed.entry_id
                    if self.store.hold_back(tenant, streamed.entry_id):
                        log.warning(
                            "tenant %s has %d webhook deliveries pending (WEBHOOK_MAX_PENDING): its events"
                            " wait in its event index until some end",
                            tenant,
                            self.store.max_pending,
                        )
        return [streamed.entry_id for streamed in batch]

    def catch_up(self, cursor: str) -> bool:
        """For each tenant whose events wait at its pending cap, as many of them as it has room for
        made deliveries now, read from its event index up to `cursor` (what the stream's reading has
        passed; later ones are dispatched as they are read). A tenant with nothing left waiting goes
        back to having its events dispatched as they come. Whether any tenant's events still wait."""
        behind = self.store.tenants_behind()
        for tenant, start in behind.items():
            if self.store.pending_room(tenant) <= 0:
                continue
            entries = self.store.index_entries(tenant, start, cursor, BATCH)
            fan_out = FanOut(self.store, self.enqueue)
            for entry_id, body in entries:
                streamed = StreamedEvent(entry_id, body)
                event = _event_of(streamed)
                if event is not None and not fan_out(tenant, event, streamed):
                    self.store.go_on_from(tenant, entry_id)  # this one again, for its endpoints left
                    break
            else:
                if len(entries) < BATCH:
                    if self.store.caught_up(tenant, cursor):
                        log.info("tenant %s: its held-back events are all deliveries now", tenant)
                        behind[tenant] = ""
                else:
                    self.store.go_on_from(tenant, f"({entries[-1][0]}")
        return any(behind.values())

    def take_turn(self, cursor_to: str = "") -> str | None:
        """The cursor when this process has the dispatcher's turn (taken or renewed), else None; with
        `cursor_to`, the cursor is moved there too (only by the holder)."""
        keys = [self.names.webhook_dispatcher_turn, self.names.webhook_dispatch_cursor]
        held, cursor = self._turn(keys=keys, args=[self.consumer, int(TURN_SECONDS * 1000), cursor_to])
        return text(cursor) if held else None

    def dispatch_next(self) -> bool:
        """One round: with the turn, the batch after the cursor dispatched and the cursor moved past it.
        Whether this process had the turn."""
        cursor = self.take_turn()
        if cursor is None:
            return False
        if not self.store.any_endpoint():
            # nothing to deliver or replay to (one EXISTS a second), and the cursor stays: once an
            # endpoint is there, what the stream holds since is indexed (and no older than it, not sent)
            self._stop.wait(READ_SECONDS)
            return True
        stream = self.names.all_events_stream
        wait = CATCH_UP_SECONDS if self._behind else READ_SECONDS
        answer: Any = self.redis.xread({stream: cursor}, count=BATCH, block=int(wait * 1000))
        entries = answer[0][1] if answer else []
        batch = [StreamedEvent(text(entry_id), _body(fields)) for entry_id, fields in entries]
        if batch:
            self.dispatch(batch)
            self.take_turn(batch[-1].entry_id)
            cursor = batch[-1].entry_id
        if cursor != "0":
            self._behind = self.catch_up(cursor)
        return True

    def _consume(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.dispatch_next():
                    self._stop.wait(TURN_SECONDS / 4)  # another process has the turn
            except Exception as error:  # refused credentials, a broken Redis: try again shortly
                log.warning("webhook dispatch failed: %s", type(error).__name__)
                self._stop.wait(1.0)

    def _requeue(self) -> None:
        while not self._stop.wait(REQUEUE_EVERY_SECONDS):
            try:
                for delivery_id in self.store.requeue_due(LATE_SECONDS, self.grace):
                    log.warning("delivery %s: its task is overdue, queued again", delivery_id)
                    self.enqueue(delivery_id)
            except Exception as error:
                log.warning("requeueing deliveries failed: %s", type(error).__name__)


class FanOut:
    """One event made into one delivery per endpoint of its tenant that wants it, each queued; the
    tenant's endpoints read once (per batch: a FanOut lives for one)."""

    def __init__(self, store: WebhookStore, enqueue: Callable[[str], object]) -> None:
        self.store = store
        self.enqueue = enqueue
        self.endpoints: dict[str, list[Endpoint]] = {}

    def __call__(self, tenant: str, event: dict[str, object], streamed: StreamedEvent) -> bool:
        """False when the tenant's pending deliveries are full: then some of its endpoints may have the
        event and others not yet (making a delivery again is idempotent, so it is asked again whole)."""
        if tenant not in self.endpoints:
            self.endpoints[tenant] = self.store.endpoints(tenant)
        appended_at = _appended_at(streamed.entry_id)
        for endpoint in self.endpoints[tenant]:
            # an endpoint gets the events appended from its creation on (a replay sends older ones),
            # none while it is disabled
            if (
                not endpoint.enabled
                or not endpoint.wants(str(event.get("type")))
                or appended_at < endpoint.created_at
            ):
                continue
            try:
                delivery_id = self.store.create_delivery(endpoint, event, streamed.body)
            except PendingLimitReached:
                return False
            if delivery_id is not None:
                self.enqueue(delivery_id)
        return True


def _tenant(event: dict[str, object]) -> str:
    return str(event.get("tenant") or DEFAULT_TENANT)


def _appended_at(entry_id: str) -> float:
    return int(entry_id.split("-")[0]) / 1000


def _event_of(streamed: StreamedEvent) -> dict[str, object] | None:
    """The entry's event, or None (logged) when it is not one: the cursor moves past it with its batch,
    as reading it again would never make it one."""
    try:
        event = streamed.event
    except (ValueError, UnicodeDecodeError):
        event = None
    if not deliverable(event):
        log.warning("entry %s of the all-flows stream is not an event: skipped", streamed.entry_id)
        return None
    return event


def _body(fields: dict[bytes, bytes] | dict[str, str]) -> bytes:
    body = fields.get(b"event") or fields.get("event") or b"{}"  # type: ignore[call-overload]
    return body if isinstance(body, bytes) else str(body).encode()
