"""The dispatcher: turns every event of the all-flows stream into one delivery per endpoint of the event's
tenant that wants its type, and queues each delivery's task (whose only argument is the delivery's id).

It runs as a thread in every worker process that serves deliveries, all of them one consumer group
(`webhooks`) on the stream: an event is acknowledged once its deliveries exist and their tasks are
queued, and a dead worker's unacknowledged events are taken over by another (worker.follow.consume). Making a
delivery is idempotent by (endpoint, event), so an event handled twice is delivered once. A second
thread queues again the task of a delivery that should have shown up long ago (lost with a killed
worker, or held by one): the attempt itself is fenced, so a duplicate task sends nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

from worker.events import DEFAULT_TENANT
from worker.follow.consume import StreamedEvent, consume_batches
from worker.keys import RedisNames
from worker.threads import BackgroundThreads
from worker.webhooks.endpoints import Endpoint, WebhookStore

log = logging.getLogger(__name__)

GROUP = "webhooks"
CLAIM_IDLE_SECONDS = 10.0  # handling an event takes milliseconds: an entry idle this long lost its worker
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
            event = streamed.event
            tenant = str(event.get("tenant") or DEFAULT_TENANT)
            if tenant not in endpoints:
                endpoints[tenant] = self.store.endpoints(tenant)
            for endpoint in endpoints[tenant]:
                # an endpoint gets the events appended from its creation on (a replay sends older ones)
                if not endpoint.wants(str(event.get("type"))) or appended_at < endpoint.created_at:
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

    def _requeue(self) -> None:
        while not self._stop.wait(REQUEUE_EVERY_SECONDS):
            try:
                for delivery_id in self.store.requeue_due(LATE_SECONDS, self.grace):
                    log.warning("delivery %s: its task is overdue, queued again", delivery_id)
                    self.enqueue(delivery_id)
            except Exception as error:
                log.warning("requeueing deliveries failed: %s", type(error).__name__)
