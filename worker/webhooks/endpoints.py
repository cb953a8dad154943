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
from typing import Any, TypeGuard

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker import scripts
from worker.config.settings import Settings
from worker.config.tenants import parse_rate
from worker.events import DEFAULT_TENANT, DisabledData, WebhookDisabled, utc_timestamp
from worker.keys import RedisNames
from worker.replies import text

ENDPOINT_ID = re.compile(r"^wh_[0-9a-f]{24}$")
LISTED_DELIVERIES = 50  # GET .../deliveries shows the most recent ones, a page at a time
PRUNING_READS = 8  # reads of one page while the entries of deliveries gone leave it short
REPLAY_PAGE = 1000  # index entries read per XRANGE
PRUNE_LOOK = 100  # a tenant's oldest pending deliveries looked at when its count is made true again
# A delivery held behind an earlier event of its flow is queued again by that event's end at once; if
# that queueing is lost (a killed worker), the dispatcher takes it up after this long.
HELD_RECHECK_SECONDS = 60.0
TURN_TOLERANCE_SECONDS = 0.5  # a task this early for a delivery's turn is the one that was given it


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def delivery_id_of(endpoint_id: str, event_id: str) -> str:
    return f"{endpoint_id}.{event_id}"


def endpoint_of(delivery_id: str) -> str:
    """The endpoint a delivery id names (endpoint ids hold no dot)."""
    return delivery_id.partition(".")[0]


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    tenant: str
    url: str
    events: tuple[str, ...]  # empty: every type; "family.*": every type of that family
    created_at: float
    secret: str  # kept out of repr: see __repr__
    previous_secret: str = ""  # after a rotation, signs beside `secret` until `previous_until`
    previous_until: float = 0.0
    rate_limit: str = ""  # "20/second": attempts to this endpoint across every worker; "": no limit
    disabled_at: float | None = None
    failing_since: float | None = None

    def __repr__(self) -> str:
        return f"Endpoint(id={self.id!r}, tenant={self.tenant!r}, url={self.url!r}, events={self.events!r})"

    @property
    def enabled(self) -> bool:
        return self.disabled_at is None

    def wants(self, event_type: str) -> bool:
        return not self.events or any(matches(pattern, event_type) for pattern in self.events)

    def signing_secrets(self, now: float) -> list[str]:
        """The secrets a delivery made at `now` is signed with: the current one first, then the one it
        replaced while the rotation's overlap lasts."""
        if self.previous_secret and now < self.previous_until:
            return [self.secret, self.previous_secret]
        return [self.secret]


def matches(pattern: str, event_type: str) -> bool:
    """Whether an endpoint's filter entry takes this type: the type itself, or `family.*`."""
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


@dataclass(frozen=True, slots=True)
class EndpointChange:
    """What `PATCH /v1/webhooks/{id}` changes; None: left as it is (rate_limit "": no limit any more)."""

    url: str | None = None
    events: tuple[str, ...] | None = None
    rate_limit: str | None = None


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
    at: float = 0.0  # Redis's time when the attempt began: its `webhook-timestamp`


@dataclass(frozen=True, slots=True)
class NoAttempt:
    """Why a task makes no attempt now: `missing`, `over` (delivered or failed), `wait`, `busy` or
    `full` (its endpoint has as many attempts in flight as it may) or `rate` (its endpoint's rate is
    used up; then `seconds` until it may), `held` (an earlier event of its flow goes first: that one's end
    queues this task again)."""

    reason: str
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """What recording an attempt's outcome found: the delivery's attempts so far; the flow's next
    delivery to this endpoint, whose turn it is now ("": none); when the endpoint has been failing
    long enough to be disabled, since when (epoch seconds); and, without a successor, the delivery
    waiting at the endpoint whose turn the attempt's end made now ("": none)."""

    attempts: int
    successor: str = ""
    failing_since: float | None = None
    waiting: str = ""


@dataclass(frozen=True, slots=True)
class Due:
    """A delivery that may be due now, and its tenant."""

    tenant: str


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a replay queued: how many events, and, when it stopped before the end (its window of events
    or the tenant's pending deliveries were full), the moment (epoch seconds) to go on from."""

    queued: int
    next_since: float | None = None


class PendingLimitReached(Exception):
    """The tenant has as many deliveries pending as it may have (WEBHOOK_MAX_PENDING)."""


class EndpointLimitReached(Exception):
    """The tenant has as many endpoints as it may have."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a tenant may have at most {limit} webhook endpoints; delete one first")


class WebhookStore:
    def __init__(
        self,
        client: redis.Redis,
        names: RedisNames,
        retention: float,
        schedule: Sequence[float],
        *,
        disable_after: float = 432000.0,
        stream_retention: float = 86400.0,
        max_pending: int = 10000,
        replay_max_events: int = 5000,
    ) -> None:
        self.redis: Any = client  # redis-py annotates commands as sync-or-async; this is sync
        self.names = names
        self.retention = retention  # seconds a finished delivery stays visible
        self.keep_pending = retention + sum(schedule) + 3600  # a pending one lives through its schedule
        self.disable_after = disable_after  # seconds of failing after which an endpoint is disabled
        self.stream_retention = stream_retention  # seconds the all-flows stream keeps an event
        self.max_pending = max_pending  # deliveries one tenant may have pending at once
        self.replay_max_events = replay_max_events  # events one replay queues at most
        self._save = scripts.register(client, "webhook_endpoint_save")
        self._disable = scripts.register(client, "webhook_endpoint_disable")
        self._delete = scripts.register(client, "webhook_endpoint_delete")
        self._index = scripts.register(client, "webhook_event_index")
        self._prune = scripts.register(client, "webhook_pending_prune")
        self._create = scripts.register(client, "webhook_delivery_create")
        self._begin = scripts.register(client, "webhook_attempt_begin")
        self._end = scripts.register(client, "webhook_attempt_end")
        self._requeue = scripts.register(client, "webhook_requeue_due")
        self._wait_turn = scripts.register(client, "webhook_wait_turn")

    @classmethod
    def configured(cls, client: redis.Redis, names: RedisNames, settings: Settings) -> WebhookStore:
        """The store as the settings describe it (retention, schedule, disabling, the stream's age)."""
        return cls(
            client,
            names,
            settings.webhook_retention_seconds,
            settings.webhook_retry_schedule,
            disable_after=settings.webhook_disable_after_seconds,
            stream_retention=settings.flow_retention_seconds,
            max_pending=settings.webhook_max_pending,
            replay_max_events=settings.webhook_replay_max_events,
        )

    # endpoints
    def create_endpoint(
        self, tenant: str, url: str, events: Sequence[str], limit: int | None = None, rate_limit: str = ""
    ) -> Endpoint:
        """A new endpoint of `tenant`; EndpointLimitReached when it has `limit` endpoints already."""
        endpoint_id = "wh_" + secrets.token_hex(12)
        secret = new_secret()
        fields = {
            "tenant": tenant,
            "url": url,
            "events": ",".join(events),
            "secret": secret,
            "status": "enabled",
            **_rate_fields(rate_limit),
        }
        keys = [
            self.names.webhook_endpoint(endpoint_id),
            self.names.webhook_endpoints(tenant),
            self.names.webhook_index,
        ]
        args = [endpoint_id, "save", *(item for pair in fields.items() for item in pair)]
        created_at = self._save_within(limit, keys, args)
        return Endpoint(
            endpoint_id, tenant, url, tuple(events), float(text(created_at)), secret, rate_limit=rate_limit
        )

    def update_endpoint(self, endpoint: Endpoint, change: EndpointChange) -> Endpoint | None:
        """The endpoint with `change` made; None when it was deleted meanwhile."""
        fields: dict[str, str] = {}
        if change.url is not None:
            fields["url"] = change.url
        if change.events is not None:
            fields["events"] = ",".join(change.events)
        if change.rate_limit is not None:
            fields.update(
                _rate_fields(change.rate_limit) or {"rate_limit": "", "rate_count": "", "rate_period": ""}
            )
        if fields and not self._change(
            endpoint, "update", *(item for pair in fields.items() for item in pair)
        ):
            return None
        return self.endpoint(endpoint.id, endpoint.tenant)

    def rotate_secret(self, endpoint: Endpoint, overlap: float) -> str | None:
        """A new secret for the endpoint (the old one still signs beside it for `overlap` seconds); None
        when the endpoint was deleted meanwhile."""
        secret = new_secret()
        return secret if self._change(endpoint, "rotate", secret, int(overlap)) else None

    def enable(self, endpoint: Endpoint) -> bool:
        return self._change(endpoint, "enable")

    def disable(self, endpoint: Endpoint, failing_since: float) -> int | None:
        """Disables a failing endpoint, once whoever asks: its pending deliveries end failed and one
        `webhook.disabled` event goes out; how many deliveries it failed, None when it was disabled
        already."""
        seconds, microseconds = self.redis.time()
        event = WebhookDisabled(
            at=utc_timestamp(int(seconds) + int(microseconds) / 1_000_000),
            tenant=endpoint.tenant,
            data=DisabledData(
                endpoint_id=endpoint.id, url=endpoint.url, failing_since=utc_timestamp(failing_since)
            ),
        )
        result = self._disable(
            keys=[
                self.names.webhook_endpoint(endpoint.id),
                self.names.webhook_deliveries(endpoint.id),
                self.names.webhook_due,
                self.names.webhook_pending,
                self.names.all_events_stream,
                self.names.tenant_channel(endpoint.tenant),
                self.names.webhook_tenant_pending(endpoint.tenant),
            ],
            args=[
                event.to_json(),
                self.names.webhook_delivery(""),
                self.names.webhook_flow_order(endpoint.id, ""),
                int(self.stream_retention * 1000),
                int(self.retention),
            ],
        )
        return int(result[1]) if int(result[0]) else None

    def _change(self, endpoint: Endpoint, action: str, *args: str | int) -> bool:
        keys = [
            self.names.webhook_endpoint(endpoint.id),
            self.names.webhook_endpoints(endpoint.tenant),
            self.names.webhook_index,
        ]
        return bool(int(self._save(keys=keys, args=[endpoint.id, action, *args])))

    def _save_within(self, limit: int | None, keys: list[str], args: list[Any]) -> Any:
        """The save script, run only while the tenant's index (keys[1]) holds fewer than `limit`
        endpoints: WATCHed, so concurrent registrations cannot pass the limit together; its answer."""
        if limit is None:
            return self._save(keys=keys, args=args)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(keys[1])
                    if pipe.zcard(keys[1]) >= limit:
                        raise EndpointLimitReached(limit)
                    pipe.multi()
                    self._save(keys=keys, args=args, client=pipe)
                    return pipe.execute()[-1]
                except redis.WatchError:
                    continue

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

    def delete_endpoint(self, endpoint: Endpoint) -> int:
        """Removes the endpoint; its deliveries not over yet end failed at once (how many)."""
        _, failed = self._delete(
            keys=[
                self.names.webhook_endpoint(endpoint.id),
                self.names.webhook_endpoints(endpoint.tenant),
                self.names.webhook_index,
                self.names.webhook_deliveries(endpoint.id),
                self.names.webhook_due,
                self.names.webhook_pending,
                self.names.webhook_tenant_pending(endpoint.tenant),
            ],
            args=[
                endpoint.id,
                self.names.webhook_delivery(""),
                self.names.webhook_flow_order(endpoint.id, ""),
                int(self.retention),
            ],
        )
        return int(failed)

    # deliveries
    def create_delivery(
        self, endpoint: Endpoint, event: dict[str, Any], body: bytes, *, replay: bool = False
    ) -> str | None:
        """The delivery of `event` (its JSON: `body`) to `endpoint`; its id when it is new (or, for a
        replay, pending again) and its task is to be queued, None when it exists already.
        PendingLimitReached (nothing made) when the tenant has `max_pending` deliveries pending."""
        delivery_id = delivery_id_of(endpoint.id, str(event["id"]))
        flow_id = str(event.get("flow_id") or "")
        seq = int(event.get("seq") or 0) if flow_id else 0
        fields: dict[str, str | bytes] = {
            "endpoint": endpoint.id,
            "tenant": endpoint.tenant,
            "event_id": str(event["id"]),
            "type": str(event.get("type", "")),
            "flow_id": flow_id,
            "body": body,
        }
        created = self._create(
            keys=[
                self.names.webhook_delivery(delivery_id),
                self.names.webhook_deliveries(endpoint.id),
                self.names.webhook_due,
                self.names.webhook_pending,
                self.names.webhook_flow_order(endpoint.id, flow_id),
                self.names.webhook_tenant_pending(endpoint.tenant),
            ],
            args=[
                delivery_id,
                int(self.keep_pending),
                int(self.keep_pending),
                "1" if replay else "",
                seq,
                self.max_pending,
                *(item for pair in fields.items() for item in pair),
            ],
        )
        if int(created) < 0:
            raise PendingLimitReached(endpoint.tenant)
        return delivery_id if int(created) else None

    def replay_turn(self, tenant: str, every: float, turns: int) -> float:
        """0 when `tenant` may replay now (it gets `turns` replays in each `every` seconds, counted from
        its first); else the seconds left until it may. One transaction: a counter with a TTL."""
        key = self.names.webhook_replay_turn(tenant)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(key, 0, nx=True, px=int(every * 1000))
        pipe.incr(key)
        pipe.pttl(key)
        _, taken, left_ms = pipe.execute()
        if int(taken) <= turns:
            return 0.0
        return max(0.001, int(left_ms) / 1000)

    def replay(self, endpoint: Endpoint, since: float, enqueue: Callable[[str], object]) -> Replayed:
        """Sends `endpoint` again the events of its tenant (of the types it wants) that the tenant's
        event index holds from `since` (epoch seconds) on: about `replay_max_events` of them (the
        window closes between two milliseconds), and while the tenant has room for pending
        deliveries. A delivery of one of them that is still pending is left to its task, not queued
        twice. Reads only this tenant's index, never the all-flows stream; an event older than the
        index's retention is gone from it (`since` is clamped to what it holds)."""
        start, matched, last = f"{max(0, int(since * 1000))}-0", 0, -1.0
        index = self.names.tenant_event_index(endpoint.tenant)
        while True:
            entries = self.redis.xrange(index, start, "+", count=REPLAY_PAGE)
            for entry_id, fields in entries:
                body = fields.get(b"event") or fields.get("event")
                event = _event(body)
                if event is None or not endpoint.wants(str(event.get("type"))):
                    continue
                moment = _moment(entry_id)
                # the window ends between milliseconds, so that next_since takes up exactly where it ended
                if matched >= self.replay_max_events and moment != last:
                    return Replayed(matched, moment)
                try:
                    delivery_id = self.create_delivery(endpoint, event, _bytes(body), replay=True)
                except PendingLimitReached:
                    return Replayed(matched, moment)
                matched, last = matched + 1, moment
                if delivery_id is not None:
                    enqueue(delivery_id)
            if len(entries) < REPLAY_PAGE:
                return Replayed(matched)
            start = f"({text(entries[-1][0])}"

    # the tenants' event indexes, and the tenants whose events wait there for room (the dispatcher's)
    def index_events(self, events: Sequence[tuple[str, str, bytes]]) -> None:
        """Each (all-flows entry id, tenant, body) appended to its tenant's event index under the same
        id, once however often it is asked (webhook_event_index.lua), trimmed to the stream's age."""
        if not events:
            return
        keys = [self.names.tenant_event_index(tenant) for _, tenant, _ in events]
        args: list[Any] = [int(self.stream_retention * 1000)]
        for entry_id, _, body in events:
            args += [entry_id, body]
        self._index(keys=keys, args=args)

    def tenants_behind(self) -> dict[str, str]:
        """Tenant -> where in its event index its events wait (an XRANGE start), for each tenant whose
        events were held back at its pending cap."""
        return {
            text(tenant): text(start)
            for tenant, start in self.redis.hgetall(self.names.webhook_behind).items()
        }

    def hold_back(self, tenant: str, start: str) -> bool:
        """The tenant's events from `start` (an XRANGE start in its index) on wait there; False when
        they were held back already (from an earlier start, which stands)."""
        return bool(self.redis.hsetnx(self.names.webhook_behind, tenant, start))

    def go_on_from(self, tenant: str, start: str) -> None:
        """The tenant's held-back events go on from `start` (an XRANGE start in its index)."""
        self.redis.hset(self.names.webhook_behind, tenant, start)

    def caught_up(self, tenant: str, cursor: str) -> bool:
        """None of the tenant's events wait any more, as they were read up to `cursor`: true only while
        the dispatcher's cursor is still there (WATCHed), so that a dispatcher whose turn lapsed
        meanwhile cannot let go of events a later holder passed over. Whether it was so."""
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(self.names.webhook_dispatch_cursor)
                if text(pipe.get(self.names.webhook_dispatch_cursor) or b"") != cursor:
                    return False
                pipe.multi()
                pipe.hdel(self.names.webhook_behind, tenant)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def index_entries(self, tenant: str, start: str, end: str, count: int) -> list[tuple[str, bytes]]:
        """Up to `count` entries of the tenant's event index from `start` to `end` (XRANGE bounds)."""
        entries = self.redis.xrange(self.names.tenant_event_index(tenant), start, end, count=count)
        return [
            (text(entry_id), _bytes(fields.get(b"event") or fields.get("event") or b"{}"))
            for entry_id, fields in entries
        ]

    def pending_room(self, tenant: str) -> int:
        """How many more deliveries the tenant may have pending (its count made true first)."""
        count = self._prune(
            keys=[self.names.webhook_tenant_pending(tenant)],
            args=[self.names.webhook_delivery(""), PRUNE_LOOK],
        )
        return self.max_pending - int(count)

    def deliveries(self, endpoint_id: str, limit: int = LISTED_DELIVERIES) -> list[Delivery]:
        """The endpoint's most recent deliveries, most recent first."""
        return self.deliveries_page(endpoint_id, limit)[0]

    def deliveries_page(
        self, endpoint_id: str, limit: int = LISTED_DELIVERIES, cursor: str | None = None
    ) -> tuple[list[Delivery], str | None]:
        """A page of the endpoint's deliveries, most recent first, and the cursor of the next page (None:
        this was the last). Each delivery shows once across pages, whatever is created meanwhile. An
        entry whose delivery is gone (its retention over) leaves the listing as it is read, and the page
        is read again without it, so a page is not left short by them (PRUNING_READS at most)."""
        after = _read_cursor(cursor)
        if after is not None and endpoint_of(after[1]) != endpoint_id:
            raise ValueError("a cursor of another endpoint's deliveries")
        for _ in range(PRUNING_READS):
            deliveries, next_cursor, pruned = self._deliveries_page(endpoint_id, limit, after)
            if not pruned or next_cursor is None or len(deliveries) >= limit:
                break
        return deliveries, next_cursor

    def _deliveries_page(
        self, endpoint_id: str, limit: int, after: tuple[float, str] | None
    ) -> tuple[list[Delivery], str | None, bool]:
        """One read of a page (see `deliveries_page`); and whether entries of deliveries gone were
        dropped from the listing meanwhile."""
        listed = self.names.webhook_deliveries(endpoint_id)
        top = "+inf" if after is None else repr(after[0])
        # ties on the creation time are ordered by id (descending, as ZREVRANGE orders them)
        window = self.redis.zrevrangebyscore(listed, top, "-inf", start=0, num=limit + 64, withscores=True)
        page: list[tuple[str, float]] = []
        for member, score in window:
            delivery_id = text(member)
            if after is not None and score == after[0] and delivery_id >= after[1]:
                continue
            page.append((delivery_id, float(score)))
        more = len(page) > limit
        page = page[:limit]
        deliveries = self._read_deliveries(endpoint_id, [delivery_id for delivery_id, _ in page])
        gone = {delivery_id for delivery_id, _ in page} - {delivery.id for delivery in deliveries}
        if gone:  # ended and past their retention: the hash expired, the listing forgets them too
            self.redis.zrem(listed, *gone)
        next_cursor = _write_cursor(*page[-1][::-1]) if more and page else None
        return deliveries, next_cursor, bool(gone)

    def _read_deliveries(self, endpoint_id: str, ids: list[str]) -> list[Delivery]:
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

    def due_in(self, delivery_id: str) -> NoAttempt | Due:
        """Why the delivery's task makes no attempt now, read without taking anything (a delivery whose
        next attempt is hours away never waits for a slot); else that it may be due."""
        fields = ("status", "next_attempt_at", "owner_until", "tenant")
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hmget(self.names.webhook_delivery(delivery_id), fields)
            (seconds, micros), (status, next_at, owner_until, tenant) = pipe.execute()
        now = int(seconds) + int(micros) / 1_000_000
        if status is None:
            return Due("")  # gone: webhook_attempt_begin.lua clears it up
        if text(status) != "pending":
            return NoAttempt("over")
        if next_at and float(next_at) > now + 0.05:
            return NoAttempt("wait", float(next_at) - now)
        if owner_until and float(owner_until) > now:
            return NoAttempt("busy", float(owner_until) - now)
        return Due(text(tenant or DEFAULT_TENANT))

    def begin_attempt(
        self, delivery_id: str, lease: float, endpoint_cap: int = 1_000_000
    ) -> Attempt | NoAttempt:
        """Takes the delivery's next attempt for `lease` seconds, when its endpoint has fewer than
        `endpoint_cap` attempts in flight (across every worker), its flow's earlier events to it are
        over and its rate allows; else why not now."""
        owner = secrets.token_hex(8)
        endpoint_id = endpoint_of(delivery_id)
        result = self._begin(
            keys=[
                self.names.webhook_delivery(delivery_id),
                self.names.webhook_due,
                self.names.webhook_pending,
                self.names.webhook_in_flight(endpoint_id),
                self.names.webhook_waiting(endpoint_id),
                self.names.webhook_endpoint(endpoint_id),
                self.names.webhook_rate(endpoint_id),
            ],
            args=[
                delivery_id,
                owner,
                lease,
                endpoint_cap,
                self.names.webhook_delivery(""),
                HELD_RECHECK_SECONDS,
                self.names.webhook_flow_order(endpoint_id, ""),
                self.names.webhook_tenant_pending(""),
            ],
        )
        reason = text(result[0])
        if reason == "begun":
            at = float(text(result[5]))
            return Attempt(owner, text(result[1]), text(result[4]), _bytes(result[2]), int(result[3]), at)
        seconds = float(text(result[1])) if reason in ("wait", "busy", "full", "rate") else 0.0
        return NoAttempt(reason, seconds)

    def end_attempt(
        self,
        delivery_id: str,
        attempt: Attempt,
        outcome: str,
        status_code: int | None,
        retry_in: float = 0.0,
    ) -> AttemptEnd | None:
        """Records the attempt's outcome (`delivered`, `retry` in `retry_in` seconds, or `failed`); None
        when the attempt no longer owned the delivery (fenced)."""
        keep = self.keep_pending if outcome == "retry" else self.retention
        endpoint_id = attempt.endpoint_id
        result = self._end(
            keys=[
                self.names.webhook_delivery(delivery_id),
                self.names.webhook_due,
                self.names.webhook_pending,
                self.names.webhook_in_flight(endpoint_id),
                self.names.webhook_endpoint(endpoint_id),
                self.names.webhook_waiting(endpoint_id),
            ],
            args=[
                delivery_id,
                attempt.owner,
                outcome,
                "" if status_code is None else status_code,
                retry_in,
                int(keep),
                self.disable_after,
                HELD_RECHECK_SECONDS,
                self.names.webhook_flow_order(endpoint_id, ""),
                self.names.webhook_tenant_pending(""),
                self.names.webhook_delivery(""),
            ],
        )
        if text(result[0]) == "fenced":
            return None
        since = text(result[4])
        return AttemptEnd(int(result[1]), text(result[3]), float(since) if since else None, text(result[5]))

    def wait_turn(self, delivery_id: str, spacing: float, lease: float) -> float | None:
        """A turn for a due delivery that found no slot, behind its endpoint's other waiting ones
        (webhook_wait_turn.lua): seconds until it comes, or None when another task of the delivery
        holds a turn already (this one is a copy)."""
        endpoint_id = endpoint_of(delivery_id)
        seconds, given = self._wait_turn(
            keys=[self.names.webhook_waiting(endpoint_id), self.names.webhook_due],
            args=[delivery_id, spacing, lease, TURN_TOLERANCE_SECONDS],
        )
        return float(text(seconds)) if text(given) == "given" else None

    def requeue_due(self, late: float, grace: float, limit: int = 100) -> list[str]:
        """Deliveries whose task is more than `late` seconds overdue; each gets `grace` seconds more before
        it is taken up again (by whichever dispatcher asks first)."""
        return [
            text(item) for item in self._requeue(keys=[self.names.webhook_due], args=[late, grace, limit])
        ]

    def tenant_pending(self) -> dict[str, int]:
        """How many deliveries each tenant with endpoints has pending."""
        tenants = self.tenants_with_endpoints()
        with self.redis.pipeline(transaction=False) as pipe:
            for tenant in tenants:
                pipe.zcard(self.names.webhook_tenant_pending(tenant))
            counts = pipe.execute()
        return {tenant: int(count) for tenant, count in zip(tenants, counts, strict=True)}

    def oldest_pending(self) -> tuple[int, float | None]:
        """How many deliveries are pending, and when the oldest of them was created (None: none)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.names.webhook_pending)
            pipe.zrange(self.names.webhook_pending, 0, 0, withscores=True)
            count, oldest = pipe.execute()
        return int(count), (float(oldest[0][1]) if oldest else None)

    def endpoint_statuses(self) -> dict[tuple[str, str], int]:
        """(tenant, status) -> how many endpoints, over every tenant's (for /metrics: one ZRANGE of the
        index and one HMGET per endpoint, at most WEBHOOK_MAX_ENDPOINTS a tenant)."""
        ids = [text(endpoint_id) for endpoint_id in self.redis.zrange(self.names.webhook_index, 0, -1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for endpoint_id in ids:
                pipe.hmget(self.names.webhook_endpoint(endpoint_id), "tenant", "status")
            found = pipe.execute()
        counted: dict[tuple[str, str], int] = {}
        for tenant, status in found:
            if tenant is None:  # deleted since the ZRANGE
                continue
            disabled = status is not None and text(status) == "disabled"
            key = (text(tenant), "disabled" if disabled else "enabled")
            counted[key] = counted.get(key, 0) + 1
        return counted


def _endpoint(endpoint_id: str, raw: dict[Any, Any]) -> Endpoint:
    fields = {text(key): text(value) for key, value in raw.items()}
    disabled = fields.get("status") == "disabled"
    return Endpoint(
        id=endpoint_id,
        tenant=fields.get("tenant", ""),
        url=fields.get("url", ""),
        events=tuple(item for item in fields.get("events", "").split(",") if item),
        created_at=float(fields.get("created_at") or 0),
        secret=fields.get("secret", ""),
        previous_secret=fields.get("previous_secret", ""),
        previous_until=float(fields.get("previous_until") or 0),
        rate_limit=fields.get("rate_limit", ""),
        disabled_at=float(fields.get("disabled_at") or 0) if disabled else None,
        failing_since=float(fields["failing_since"]) if fields.get("failing_since") else None,
    )


def _rate_fields(rate_limit: str) -> dict[str, str]:
    """An endpoint's rate as its hash keeps it (the Lua step reads count and period); {} for none."""
    if not rate_limit:
        return {}
    count, period = parse_rate(rate_limit)
    return {"rate_limit": rate_limit, "rate_count": str(count), "rate_period": str(period)}


def _write_cursor(score: float, delivery_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r} {delivery_id}".encode()).decode().rstrip("=")


def _read_cursor(cursor: str | None) -> tuple[float, str] | None:
    """(creation time, id) of the last delivery of the previous page; a malformed cursor is ValueError."""
    if not cursor:
        return None
    try:
        score, delivery_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split(" ")
        return float(score), delivery_id
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError("malformed cursor") from error


def _event(body: bytes | str | None) -> dict[str, Any] | None:
    try:
        event = json.loads(body) if body is not None else None
    except ValueError:
        return None
    return event if deliverable(event) else None


def deliverable(event: object) -> TypeGuard[dict[str, Any]]:
    """Whether a stream entry's JSON is an event a delivery can be made of: an object with an id, whose
    `seq`, when it is a flow's, is a whole number (its place in the flow's order at each endpoint)."""
    if not isinstance(event, dict) or "id" not in event:
        return False
    if not event.get("flow_id"):
        return True
    try:
        int(event.get("seq") or 0)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _moment(entry_id: bytes | str) -> float:
    """The epoch seconds a stream entry was appended at (the milliseconds of its id)."""
    return int(text(entry_id).split("-")[0]) / 1000


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
            statuses = self.store.endpoint_statuses()
        except redis.RedisError:
            return
        endpoints = GaugeMetricFamily(
            "okc_webhook_endpoints", "Webhook endpoints by tenant and status", labels=["tenant", "status"]
        )
        for tenant in sorted({tenant for tenant, _ in statuses}):
            for status in ("enabled", "disabled"):  # both, 0 when none, so an alert sees the fall to 0
                endpoints.add_metric([tenant, status], statuses.get((tenant, status), 0))
        yield endpoints
        yield GaugeMetricFamily(
            "okc_webhook_pending_deliveries", "Webhook deliveries not done yet", value=count
        )
        yield GaugeMetricFamily(
            "okc_webhook_oldest_pending_seconds",
            "Age of the oldest webhook delivery not done yet (0 when none)",
            value=0.0 if oldest is None else max(0.0, now - oldest),
        )
        try:
            per_tenant, behind = self.store.tenant_pending(), self.store.tenants_behind()
        except redis.RedisError:
            return
        pending = GaugeMetricFamily(
            "okc_webhook_pending",
            "Webhook deliveries not done yet, per tenant (WEBHOOK_MAX_PENDING caps it)",
            labels=["tenant"],
        )
        for tenant, count in per_tenant.items():
            pending.add_metric([tenant], count)
        yield pending
        held = GaugeMetricFamily(
            "okc_webhook_held_back_seconds",
            "Age of a tenant's oldest event not made deliveries yet because it has WEBHOOK_MAX_PENDING"
            " deliveries pending (only tenants held back)",
            labels=["tenant"],
        )
        for tenant, start in behind.items():
            held.add_metric([tenant], max(0.0, now - _moment(start.lstrip("("))))
        yield held
