"""Webhook deliveries in-process: an endpoint on httpx's MockTransport that answers as told and keeps
every request, the store and courier around it, and the in-process shim's webhook store."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

from tests.support.shim import Shim
from worker.flows.store import FlowStore
from worker.webhooks.delivery import Courier
from worker.webhooks.endpoints import Endpoint, WebhookStore

PUBLIC = "93.184.215.14"
URL = "https://hooks.partner.example/oktopost?x=1"


@dataclass
class Receiver:
    """The endpoint: answers with `statuses` in turn (the last one repeated), after `delays` in turn (then
    at once), keeps every request."""

    statuses: list[int] = field(default_factory=lambda: [200])
    requests: list[httpx.Request] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.delays:
            time.sleep(self.delays.pop(0))
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        headers = {"Location": "https://10.0.0.1/"} if 300 <= status < 400 else {}
        return httpx.Response(status, headers=headers)

    def event_ids(self) -> list[str]:
        """The `webhook-id` of every request, in the order they came."""
        return [request.headers["webhook-id"] for request in self.requests]


@dataclass
class Setup:
    flows: FlowStore
    webhooks: WebhookStore
    receiver: Receiver
    addresses: dict[str, list[str]]
    courier: Courier
    endpoint: Endpoint
    metrics_key: str

    def delivery_of_new_event(self) -> tuple[str, bytes]:
        flow = self.flows.create(f"{len(self.receiver.requests):040x}", "LinkedIn", "profile", "ref", None)
        _, fields = self.flows.redis.xrange(self.flows.names.all_events_stream)[-1]
        body = fields[b"event"]
        delivery_id = self.webhooks.create_delivery(self.endpoint, json.loads(body), body)
        assert delivery_id is not None
        assert flow.flow_id in body.decode()
        return delivery_id, body

    def make_due(self, delivery_id: str) -> None:
        self.flows.redis.hset(self.flows.names.webhook_delivery(delivery_id), "next_attempt_at", 0)


PUBLIC_URL = "https://93.184.215.14/hooks/oktopost?source=okc"  # an address: no DNS needed


def webhooks_of(shim: Shim) -> WebhookStore:
    store: WebhookStore = shim.app.state.deps.webhooks
    return store
