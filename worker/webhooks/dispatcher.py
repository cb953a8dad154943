"""The dispatcher: turns every event of the all-flows stream into one delivery per endpoint of the event's
tenant that wants its type, and queues each delivery's task (whose only argument is the delivery's id).

It runs as a thread in every worker process that serves deliveries; one of them at a time has the turn
(scripts/dispatcher_turn.lua) and reads the stream from a cursor kept in an internal key, moved past a
batch once its deliveries exist and their tasks are queued. Not a consumer group: the stream is public,
and a subscriber's XACK on a group of ours would make events vanish. A process that dies lets its turn
lapse within TURN_SECONDS and another carries on from the cursor; making a delivery is idempotent by
(endpoint, event), so an event handled twice is delivered once. A second
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
from worker.webhooks.endpoints import Endpoint, WebhookStore

log = logging.getLogger(__name__)

TURN_SECONDS = 10.0  # handling a batch takes milliseconds: a turn not renewed this long lost its worker
BATCH = 100  # stream entries read at a time
READ_SECONDS = 1.0  # how long one read waits for new entries, so that a stop is noticed
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
        super().__init__({"oktopost-webhooks": self._consume, "oktopost-webhooks-requeue": self._requeue})

    def dispatch(self, batch: list[StreamedEvent]) -> list[str]:
        """The deliveries of a batch of events, made and queued; returns the entry ids handled (all of
        them, or the exception propagates and the batch stays pending). Endpoints are read once per tenant
        per batch, after the batch was read: every endpoint created before an event was appended is seen."""
        oldest = self.store.oldest_endpoint_created()
        endpoints: dict[str, list[Endpoint]] = {}
        for streamed in batch:
            appended_at = int(streamed.entry_id.split("-")[0]) / 1000
            if oldest is None or appended_at < oldest:  # before every endpoint: not even parsed
                continue
            event = _event_of(streamed)
            if event is None:
                continue
            tenant = str(event.get("tenant") or DEFAULT_TENANT)
            if tenant not in endpoints:
                endpoints[tenant] = self.store.endpoints(tenant)
            for endpoint in endpoints[tenant]:
                # an endpoint gets the events appended from its creation on (a replay sends older ones),
                # none while it is disabled
                if (
                    not endpoint.enabled
                    or not endpoint.wants(str(event.get("type")))
                    or appended_at < endpoint.created_at
                ):
                    continue
                delivery_id = self.store.create_delivery(endpoint, event, streamed.body)
                if delivery_id is not None:
                    self.enqueue(delivery_id)
        return [streamed.entry_id for streamed in batch]

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
            # nothing to deliver to (one EXISTS a second); the events meanwhile are older than any
            # endpoint to come, skipped unparsed once one is there
            self._stop.wait(READ_SECONDS)
            return True
        stream = self.names.all_events_stream
        answer: Any = self.redis.xread({stream: cursor}, count=BATCH, block=int(READ_SECONDS * 1000))
        entries = answer[0][1] if answer else []
        batch = [StreamedEvent(text(entry_id), _body(fields)) for entry_id, fields in entries]
        if batch:
            self.dispatch(batch)
            self.take_turn(batch[-1].entry_id)
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


def _event_of(streamed: StreamedEvent) -> dict[str, object] | None:
    """The entry's event, or None (logged) when it is not one: the cursor moves past it with its batch,
    as reading it again would never make it one."""
    try:
        event = streamed.event
    except (ValueError, UnicodeDecodeError):
        event = None
    if not isinstance(event, dict) or "id" not in event:
        log.warning("entry %s of the all-flows stream is not an event: skipped", streamed.entry_id)
        return None
    return event


def _body(fields: dict[bytes, bytes] | dict[str, str]) -> bytes:
    body = fields.get(b"event") or fields.get("event") or b"{}"  # type: ignore[call-overload]
    return body if isinstance(body, bytes) else str(body).encode()
