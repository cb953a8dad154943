"""Webhook endpoints and their deliveries in Redis: a tenant's endpoints, one delivery per (endpoint, event),
each delivery's attempts, fenced so that a task run twice counts one attempt.

An endpoint's secret is kept in its hash (a delivery needs it to sign) and leaves it only for signing and
in the one answer that creates the endpoint. A delivery keeps the event's JSON as it came from the
all-flows stream, so a retry hours later sends the same bytes even when the stream has trimmed it.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker import scripts
from worker.events import DEFAULT_TENANT
from worker.keys import RedisNames
from worker.replies import text

ENDPOINT_ID = re.compile(r"^wh_[0-9a-f]{24}$")
LISTED_DELIVERIES = 100  # GET .../deliveries shows the most recent ones
REPLAY_PAGE = 1000  # stream entries read per XRANGE


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def delivery_id_of(endpoint_id: str, event_id: str) -> str:
    return f"{endpoint_id}.{event_id}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    tenant: str
    url: str
    events: tuple[str, ...]  # empty: every type
    created_at: float
    secret: str  # kept out of repr: see __repr__

    def __repr__(self) -> str:
        return f"Endpoint(id={self.id!r}, tenant={self.tenant!r}, url={self.url!r}, events={self.events!r})"

    def wants(self, event_type: str) -> bool:
        return not self.events or event_type in self.events


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    endpoint_id: str
    event_id: str
    type: str
    flow_id: str
    status: str  # pending | delivered | failed
    attempts: int
    last_status_code: int | None
    next_attempt_at: float | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Attempt:
    """An attempt a task took (webhook_attempt_begin.lua): what to send, and how many came before it."""

    owner: str
    endpoint_id: str
    event_id: str  # the `webhook-id` a receiver dedupes by
    body: bytes
    attempts_before: int


@dataclass(frozen=True, slots=True)
class NoAttempt:
    """Why a task makes no attempt now: `missing`, `over` (delivered or failed), `wait` or `busy` (then
    `seconds` until it may)."""

    reason: str
    seconds: float = 0.0


class WebhookStore:
    def __init__(
        self, client: redis.Redis, names: RedisNames, retention: float, schedule: Sequence[float]
    ) -> None:
        self.redis: Any = client  # redis-py annotates commands as sync-or-async; this is sync
        self.names = names
        self.retention = retention  # seconds a finished delivery stays visible
        self.keep_pending = retention + sum(schedule) + 3600  # a pending one lives through its schedule
        self._save = scripts.register(client, "webhook_endpoint_save")
        self._create = scripts.register(client, "webhook_delivery_create")
        self._begin = scripts.register(client, "webhook_attempt_begin")
        self._end = scripts.register(client, "webhook_attempt_end")
        self._requeue = scripts.register(client, "webhook_requeue_due")

    # endpoints
    def create_endpoint(self, tenant: str, url: str, events: Sequence[str]) -> Endpoint:
        endpoint_id = "wh_" + secrets.token_hex(12)
        secret = new_secret()
        seconds, microseconds = self.redis.time()
        created_at = int(seconds) + int(microseconds) / 1_000_000
        fields = {
            "tenant": tenant,
            "url": url,
            "events": ",".join(events),
            "secret": secret,
            "created_at": repr(created_at),
        }
        self._save(
            keys=[
                self.names.webhook_endpoint(endpoint_id),
                self.names.webhook_endpoints(tenant),
                self.names.webhook_index,
            ],
            args=[endpoint_id, "save", *(item for pair in fields.items() for item in pair)],
        )
        return Endpoint(endpoint_id, tenant, url, tuple(events), created_at, secret)

    def any_endpoint(self) -> bool:
        """Whether any tenant has an endpoint (one EXISTS: the dispatcher asks it once per batch)."""
        return bool(self.redis.exists(self.names.webhook_index))

    def oldest_endpoint_created(self) -> float | None:
        """When the oldest endpoint (of any tenant) was created; None when there is none."""
        oldest = self.redis.zrange(self.names.webhook_index, 0, 0, withscores=True)
        return float(oldest[0][1]) if oldest else None

    def endpoint(self, endpoint_id: str, tenant: str | None = None) -> Endpoint | None:
        """The endpoint; None when there is none, or when it is another tenant's than `tenant` (given)."""
        if not ENDPOINT_ID.match(endpoint_id):
            return None
        raw = self.redis.hgetall(self.names.webhook_endpoint(endpoint_id))
        endpoint = _endpoint(endpoint_id, raw) if raw else None
        if endpoint is None or (tenant is not None and endpoint.tenant != tenant):
            return None
        return endpoint

    def endpoints(self, tenant: str) -> list[Endpoint]:
        """The tenant's endpoints, oldest first."""
        ids = [
            text(endpoint_id)
            for endpoint_id in self.redis.zrange(self.names.webhook_endpoints(tenant), 0, -1)
        ]
        with self.redis.pipeline(transaction=False) as pipe:
            for endpoint_id in ids:
                pipe.hgetall(self.names.webhook_endpoint(endpoint_id))
            raws = pipe.execute()
        return [
            endpoint
            for endpoint_id, raw in zip(ids, raws, strict=True)
            if raw and (endpoint := _endpoint(endpoint_id, raw)).tenant == tenant
        ]

    def tenants_with_endpoints(self) -> list[str]:
        """Every tenant that has an endpoint (for operators' listings)."""
        pattern = self.names.webhook_endpoints("*")
        head, tail = pattern.split("*")
        return sorted(
            text(key)[len(head) : -len(tail)] for key in self.redis.scan_iter(match=pattern, count=1000)
        )

    def delete_endpoint(self, endpoint: Endpoint) -> None:
        self._save(
            keys=[
                self.names.webhook_endpoint(endpoint.id),
                self.names.webhook_endpoints(endpoint.tenant),
                self.names.webhook_index,
            ],
            args=[endpoint.id, "delete"],
        )

    # deliveries
    def create_delivery(
        self, endpoint: Endpoint, event: dict[str, Any], body: bytes, *, replay: bool = False
    ) -> str | None:
        """The delivery of `event` (its JSON: `body`) to `endpoint`; its id when it is new (or, for a
        replay, pending again) and its task is to be queued, None when it exists already."""
        delivery_id = delivery_id_of(endpoint.id, str(event["id"]))
        fields: dict[str, str | bytes] = {
            "endpoint": endpoint.id,
            "tenant": endpoint.tenant,
            "event_id": str(event["id"]),
            "type": str(event.get("type", "")),
            "flow_id": str(event.get("flow_id", "")),
            "body": body,
        }
        created = self._create(
            keys=[
                self.names.webhook_delivery(delivery_id),
                self.names.webhook_deliveries(endpoint.id),
                self.names.webhook_due,
                self.names.webhook_pending,
            ],
            args=[
                delivery_id,
                int(self.keep_pending),
                int(self.retention),
                "1" if replay else "",
                *(item for pair in fields.items() for item in pair),
            ],
        )
        return delivery_id if int(created) else None

    def replay(self, endpoint: Endpoint, since: float, enqueue: Callable[[str], object]) -> int:
        """Sends `endpoint` again every event of its tenant (of the types it wants) that the all-flows
        stream still holds from `since` (epoch seconds) on; how many. A delivery of one of them that is
        still pending is left to its task, not queued twice."""
        start, matched = f"{max(0, int(since * 1000))}-0", 0
        while True:
            entries = self.redis.xrange(self.names.all_events_stream, start, "+", count=REPLAY_PAGE)
            for _, fields in entries:
                body = fields.get(b"event") or fields.get("event")
                event = json.loads(body)
                if event.get("tenant", DEFAULT_TENANT) != endpoint.tenant or not endpoint.wants(
                    event.get("type")
                ):
                    continue
                matched += 1
                delivery_id = self.create_delivery(endpoint, event, _bytes(body), replay=True)
                if delivery_id is not None:
                    enqueue(delivery_id)
            if len(entries) < REPLAY_PAGE:
                return matched
            start = f"({text(entries[-1][0])}"

    def deliveries(self, endpoint_id: str, limit: int = LISTED_DELIVERIES) -> list[Delivery]:
        """The endpoint's most recent deliveries, most recent first."""
        ids = [
            text(item)
            for item in self.redis.zrevrange(self.names.webhook_deliveries(endpoint_id), 0, limit - 1)
        ]
        fields = (
            "endpoint",
            "event_id",
            "type",
            "flow_id",
            "status",
            "attempts",
            "last_status_code",
            "next_attempt_at",
            "created_at",
        )
        with self.redis.pipeline(transaction=False) as pipe:
            for delivery_id in ids:
                pipe.hmget(self.names.webhook_delivery(delivery_id), fields)
            rows = pipe.execute()
        deliveries = []
        for delivery_id, row in zip(ids, rows, strict=True):
            values = dict(zip(fields, (None if value is None else text(value) for value in row), strict=True))
            if values["status"] is None:  # expired meanwhile
                continue
            deliveries.append(
                Delivery(
                    id=delivery_id,
                    endpoint_id=values["endpoint"] or endpoint_id,
                    event_id=values["event_id"] or "",
                    type=values["type"] or "",
                    flow_id=values["flow_id"] or "",
                    status=values["status"],
                    attempts=int(values["attempts"] or 0),
                    last_status_code=int(values["last_status_code"]) if values["last_status_code"] else None,
                    next_attempt_at=float(values["next_attempt_at"]) if values["next_attempt_at"] else None,
                    created_at=float(values["created_at"] or 0),
                )
            )
        return deliveries

    def begin_attempt(self, delivery_id: str, lease: float) -> Attempt | NoAttempt:
        owner = secrets.token_hex(8)
        result = self._begin(
            keys=[self.names.webhook_delivery(delivery_id), self.names.webhook_due],
            args=[delivery_id, owner, lease],
        )
        reason = text(result[0])
        if reason == "begun":
            return Attempt(owner, text(result[1]), text(result[4]), _bytes(result[2]), int(result[3]))
        seconds = float(text(result[1])) if reason in ("wait", "busy") else 0.0
        return NoAttempt(reason, seconds)

    def end_attempt(
        self, delivery_id: str, attempt: Attempt, outcome: str, status_code: int | None, retry_in: float = 0.0
    ) -> int | None:
        """Records the attempt's outcome (`delivered`, `retry` in `retry_in` seconds, or `failed`); the
        delivery's attempts so far, or None when the attempt no longer owned the delivery (fenced)."""
        keep = self.keep_pending if outcome == "retry" else self.retention
        result = self._end(
            keys=[
                self.names.webhook_delivery(delivery_id),
                self.names.webhook_due,
                self.names.webhook_pending,
            ],
            args=[
                delivery_id,
                attempt.owner,
                outcome,
                "" if status_code is None else status_code,
                retry_in,
                int(keep),
            ],
        )
        return None if text(result[0]) == "fenced" else int(result[1])

    def postpone_due(self, delivery_id: str, seconds: float) -> None:
        """The delivery's task shows up again within `seconds` (never brought forward; only while due)."""
        now = float(self.redis.time()[0])
        self.redis.zadd(self.names.webhook_due, {delivery_id: now + seconds}, xx=True, gt=True)

    def requeue_due(self, late: float, grace: float, limit: int = 100) -> list[str]:
        """Deliveries whose task is more than `late` seconds overdue; each gets `grace` seconds more before
        it is taken up again (by whichever dispatcher asks first)."""
        return [
            text(item) for item in self._requeue(keys=[self.names.webhook_due], args=[late, grace, limit])
        ]

    def oldest_pending(self) -> tuple[int, float | None]:
        """How many deliveries are pending, and when the oldest of them was created (None: none)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.names.webhook_pending)
            pipe.zrange(self.names.webhook_pending, 0, 0, withscores=True)
            count, oldest = pipe.execute()
        return int(count), (float(oldest[0][1]) if oldest else None)


def _endpoint(endpoint_id: str, raw: dict[Any, Any]) -> Endpoint:
    fields = {text(key): text(value) for key, value in raw.items()}
    return Endpoint(
        id=endpoint_id,
        tenant=fields.get("tenant", ""),
        url=fields.get("url", ""),
        events=tuple(item for item in fields.get("events", "").split(",") if item),
        created_at=float(fields.get("created_at") or 0),
        secret=fields.get("secret", ""),
    )


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


class BacklogCollector(Collector):
    """The deliveries not done yet on /metrics, read from Redis at scrape time."""

    def __init__(self, store: WebhookStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            count, oldest = self.store.oldest_pending()
            now = float(self.store.redis.time()[0])
        except redis.RedisError:
            return
        yield GaugeMetricFamily(
            "okc_webhook_pending_deliveries", "Webhook deliveries not done yet", value=count
        )
        yield GaugeMetricFamily(
            "okc_webhook_oldest_pending_seconds",
            "Age of the oldest webhook delivery not done yet (0 when none)",
            value=0.0 if oldest is None else max(0.0, now - oldest),
        )
