"""The dispatcher: turns every event of the all-flows stream into one delivery per endpoint of the event's
tenant that wants its type, and queues each delivery's task (whose only argument is the delivery's id).

It runs as a thread in every worker process that serves deliveries, all of them one consumer group
(`webhooks`) on the stream: an event is acknowledged once its deliveries exist and their tasks are
queued, and a dead worker's unacknowledged events are taken over by another (worker.follow.consume). Making a
delivery is idempotent by (endpoint, event), so an event handled twice is delivered once. A second
thread queues again the task of a delivery that should have shown up long ago (lost with a killed
worker, or held by one): the attempt itself is fenced, so a duplicate task sends nothing twice. It also
removes, now and then, the group's records of consumers gone for good (workers come and go under new
names); an entry that is not an event (it cannot be parsed) is logged and acknowledged, never read again
and again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from worker.events import DEFAULT_TENANT
from worker.follow.consume import StreamedEvent, consume_batches
from worker.keys import RedisNames
from worker.webhooks.endpoints import Endpoint, WebhookStore

log = logging.getLogger(__name__)

GROUP = "webhooks"
CLAIM_IDLE_SECONDS = 10.0  # handling an event takes milliseconds: an entry idle this long lost its worker
LATE_SECONDS = 5.0  # a delivery's task this late (after its moment, or after its attempt's lease) is lost
REQUEUE_EVERY_SECONDS = 1.0
# a consumer idle this long with nothing pending is a worker gone for good: its record is removed
GONE_CONSUMER_SECONDS = 3600.0
FORGET_EVERY_SECONDS = 300.0


class Dispatcher:
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
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._consume, name="oktopost-webhooks", daemon=True),
            threading.Thread(target=self._requeue, name="oktopost-webhooks-requeue", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

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

    def _consume(self) -> None:
        while not self._stop.is_set():
            try:
                consume_batches(
                    self.redis,
                    GROUP,
                    self.consumer,
                    self.dispatch,
                    self.names.prefix,
                    start="0",  # what the stream keeps; endpoints skip what came before them
                    claim_idle=CLAIM_IDLE_SECONDS,
                    stop=self._stop,
                    # a deployment without endpoints reads nothing (one EXISTS a second); the events
                    # meanwhile are older than any endpoint to come, skipped unparsed once one is there
                    idle=lambda: not self.store.any_endpoint(),
                )
            except Exception as error:  # refused credentials, a broken Redis: try again shortly
                log.warning("webhook dispatch failed: %s", type(error).__name__)
                self._stop.wait(1.0)

    def forget_gone_consumers(self, idle_seconds: float = GONE_CONSUMER_SECONDS) -> list[str]:
        """Removes the group's consumers idle for `idle_seconds` with no entry pending (their entries were
        taken over), never this one; returns their names."""
        stream, gone = self.names.all_events_stream, []
        consumers: list[dict[str, Any]] = self.redis.xinfo_consumers(stream, GROUP)  # type: ignore[assignment]
        for consumer in consumers:
            name = _text(consumer["name"])
            if name != self.consumer and not consumer["pending"] and consumer["idle"] >= idle_seconds * 1000:
                self.redis.xgroup_delconsumer(stream, GROUP, name)
                gone.append(name)
        return gone

    def _requeue(self) -> None:
        forget_at = time.monotonic() + FORGET_EVERY_SECONDS
        while not self._stop.wait(REQUEUE_EVERY_SECONDS):
            if time.monotonic() >= forget_at:
                forget_at = time.monotonic() + FORGET_EVERY_SECONDS
                try:
                    for name in self.forget_gone_consumers():
                        log.info("webhook dispatcher %s is gone: its consumer record removed", name)
                except Exception as error:  # no group yet, Redis away: next time
                    log.debug("gone consumers not removed: %s", type(error).__name__)
            try:
                for delivery_id in self.store.requeue_due(LATE_SECONDS, self.grace):
                    log.warning("delivery %s: its task is overdue, queued again", delivery_id)
                    self.enqueue(delivery_id)
            except Exception as error:
                log.warning("requeueing deliveries failed: %s", type(error).__name__)


def _event_of(streamed: StreamedEvent) -> dict[str, object] | None:
    """The entry's event, or None (logged) when it is not one: such an entry is acknowledged with its batch,
    as reading it again would never make it one."""
    try:
        event = streamed.event
    except (ValueError, UnicodeDecodeError):
        event = None
    if not isinstance(event, dict) or "id" not in event:
        log.warning("entry %s of the all-flows stream is not an event: skipped", streamed.entry_id)
        return None
    return event


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
