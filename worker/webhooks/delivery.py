"""One delivery attempt: take it (fenced), check the endpoint's address again, sign with the Standard
Webhooks library, POST, record the outcome and say when the next attempt is due.

An attempt, from resolving the endpoint's host to the answer's headers, ends within one deadline
(WEBHOOK_TIMEOUT_SECONDS): httpx bounds each read alone, so a receiver that drips its answer a byte at a
time would otherwise hold the attempt, and its slot, for as long as it likes. The deadline is well
inside the attempt's lease, so an attempt is not sent again while it is still under way.

Slots: a task reads when its delivery is due before it takes anything, so a delivery whose next
attempt is hours away never waits for a slot. A due one takes a slot of this process (a tenant gets at
most three quarters of them, so one tenant's dead endpoints cannot hold them all) and one of its
endpoint's ENDPOINT_IN_FLIGHT, counted in Redis across every worker. One that finds none is given a
turn behind its endpoint's other waiting deliveries, spaced by the time an attempt may take divided by
ENDPOINT_IN_FLIGHT (with jitter), and its task comes back then: a dead endpoint's backlog of thousands
costs a few looks a second, not one per delivery per second.

The answer decides: a 2xx is delivered; anything else, a timeout or a refused address is retried after
the next wait of WEBHOOK_RETRY_SCHEDULE, and after the last one the delivery is `failed`. Redirects are
not followed (a 3xx is a failed attempt): a redirect could lead anywhere, past the address check.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

from worker.observing.metrics import WorkerMetrics
from worker.oktopost.deadline import bound_attempts, end_attempt, is_address, start_attempt
from worker.webhooks.endpoints import Attempt, NoAttempt, WebhookStore, endpoint_of
from worker.webhooks.urls import RefusedUrl, Resolver, resolve, target_of

log = logging.getLogger(__name__)

USER_AGENT = "oktopost-connect-webhooks/1"
ENDPOINT_IN_FLIGHT = 4  # attempts one endpoint is sent at once, by every worker together
REMEMBERED_ENDPOINTS = 4096  # endpoints whose last answer a worker's slots keep (the least recent go first)
SHARED_SPACING = 20  # a delivery held back by other endpoints' attempts looks again in timeout / this
_JITTER = secrets.SystemRandom()


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What a task did, and in how many seconds it must run again (None: never)."""

    # delivered | retry | failed | fenced | missing | over | wait | busy | deferred | copy | held | rate
    outcome: str
    again_in: float | None = None
    successor: str = ""  # the flow's next delivery to the endpoint, whose turn it is now: queue its task
    waiting: str = ""  # the endpoint's waiting delivery whose turn the attempt's end made now: queue it too


@dataclass
class Slots:
    """How many attempts this process sends at once, in all, for one tenant and for one endpoint, so
    that slow or dead endpoints hold neither the threads that serve flows, nor the other tenants'
    deliveries, nor the other endpoints of their own tenant. An endpoint whose last attempt here hung
    (no answer, or no 2xx, within half the timeout) is failing: it holds one slot at most, and the failing
    ones together hold at most half of them, so the endpoints that answer always find one, whatever
    number of endpoints hang (each such attempt holds its slot for the whole timeout). An endpoint not yet
    tried here holds one at most too, until an attempt of it answers (a quick 503 counts: it holds its
    slot no longer than a 2xx). The last answers of `remembered` endpoints are kept, over months of
    endpoints created and deleted: past that, the endpoint heard from least recently that holds no slot
    is forgotten, and counts as not yet tried."""

    total: int
    per_tenant: int
    remembered: int = REMEMBERED_ENDPOINTS
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _busy: Counter[str] = field(default_factory=Counter)
    _endpoints: Counter[str] = field(default_factory=Counter)
    # endpoint -> its last attempt answered in time, the most recently heard from last
    _answered: OrderedDict[str, bool] = field(default_factory=OrderedDict)

    @property
    def per_endpoint(self) -> int:
        """One endpoint leaves its tenant at least one slot, when the tenant has two or more."""
        return max(1, self.per_tenant - 1)

    @property
    def for_failing(self) -> int:
        """The slots the failing endpoints may hold together: half, and at least one."""
        return max(1, self.total // 2)

    def take(self, tenant: str, endpoint: str) -> bool:
        with self._lock:
            if (
                sum(self._busy.values()) >= self.total
                or self._busy[tenant] >= self.per_tenant
                or self._endpoints[endpoint] >= self._own_limit(endpoint)
                or (self._failing(endpoint) and self._held_by_failing() >= self.for_failing)
            ):
                return False
            self._busy[tenant] += 1
            self._endpoints[endpoint] += 1
            return True

    def give_back(self, tenant: str, endpoint: str, answered: bool | None = None) -> None:
        """`answered`: whether the attempt made with the slot delivered, or was refused, within half the
        timeout (None: no attempt was made), which makes the endpoint answering or failing for its next
        ones."""
        with self._lock:
            for busy, name in ((self._busy, tenant), (self._endpoints, endpoint)):
                busy[name] -= 1
                if busy[name] <= 0:
                    del busy[name]
            if answered is not None:
                self._remember(endpoint, answered)

    def _remember(self, endpoint: str, answered: bool) -> None:
        self._answered[endpoint] = answered
        self._answered.move_to_end(endpoint)
        if len(self._answered) <= self.remembered:
            return
        for name in self._answered:  # the least recently heard from first
            if name not in self._endpoints:
                del self._answered[name]
                return

    def at_own_limit(self, endpoint: str) -> bool:
        """Whether the endpoint holds all the slots it may (else others' attempts hold them)."""
        with self._lock:
            return self._endpoints[endpoint] >= self._own_limit(endpoint)

    def _own_limit(self, endpoint: str) -> int:
        return self.per_endpoint if self._answered.get(endpoint) is True else 1

    def _failing(self, endpoint: str) -> bool:
        return self._answered.get(endpoint) is False

    def _held_by_failing(self) -> int:
        return sum(held for endpoint, held in self._endpoints.items() if self._failing(endpoint))


def _answered(result: AttemptResult | None, seconds: float, timeout: float) -> bool | None:
    """Whether an attempt's endpoint answered in time, as its slots read it: it delivered, or it was
    refused within half the timeout; None when no attempt was sent."""
    if result is None or result.outcome not in ("delivered", "retry", "failed"):
        return None
    return result.outcome == "delivered" or seconds < timeout / 2


class Courier:
    """Sends deliveries' attempts; one per worker process (it holds the pooled HTTP client)."""

    def __init__(
        self,
        store: WebhookStore,
        metrics: WorkerMetrics,
        *,
        allowed_hosts: Sequence[str],
        timeout: float,
        schedule: Sequence[float],
        slots: Slots,
        transport: httpx.BaseTransport | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.allowed_hosts = list(allowed_hosts)
        self.timeout = timeout
        self.schedule = tuple(schedule)
        self.slots = slots
        self.resolver = resolver
        # no redirects; the whole attempt (resolving, connecting, sending, the answer's headers) ends
        # within `timeout`, every socket operation bounded by the time left (worker.oktopost.deadline)
        self.http = httpx.Client(
            timeout=httpx.Timeout(timeout), follow_redirects=False, transport=transport, trust_env=False
        )
        if transport is None and not bound_attempts(self.http):
            log.warning(
                "httpx %s keeps its connection pool out of reach: a webhook attempt's timeout bounds each"
                " read and write, not the whole attempt",
                httpx.__version__,
            )
        self.lease = 3 * timeout + 2.0  # an attempt outlives it only if its process stalls

    def close(self) -> None:
        self.http.close()

    def attempt(self, delivery_id: str) -> AttemptResult:
        due = self.store.due_in(delivery_id)
        if isinstance(due, NoAttempt):
            return _not_now(due)
        endpoint = endpoint_of(delivery_id)
        if not self.slots.take(due.tenant, endpoint):
            return self._defer(delivery_id, own=self.slots.at_own_limit(endpoint))
        result: AttemptResult | None = None
        started = time.monotonic()
        try:
            result = self._attempt(delivery_id)
            return result
        finally:
            answered = _answered(result, time.monotonic() - started, self.timeout)
            self.slots.give_back(due.tenant, endpoint, answered)

    def _defer(self, delivery_id: str, *, own: bool = True) -> AttemptResult:
        """No slot now: the task comes back at the delivery's turn behind the endpoint's waiting ones,
        spaced by about the time one of the endpoint's own attempts may take when it holds all it may
        (`own`), and by a twentieth of that when other endpoints' attempts hold the slots (an endpoint
        that answers, held back by ones that hang, goes on as soon as a slot is free)."""
        spacing = _JITTER.uniform(0.8, 1.2) * self.timeout / (ENDPOINT_IN_FLIGHT if own else SHARED_SPACING)
        turn = self.store.wait_turn(delivery_id, spacing, self.lease)
        if turn is None:  # a copy: the task given the turn comes then
            return AttemptResult("copy")
        return AttemptResult("deferred", turn)

    def _attempt(self, delivery_id: str) -> AttemptResult:
        taken = self.store.begin_attempt(delivery_id, self.lease, ENDPOINT_IN_FLIGHT)
        if isinstance(taken, NoAttempt):
            if taken.reason == "full":
                return self._defer(delivery_id)
            return _not_now(taken)
        started = time.monotonic()
        status_code, result = self._send(taken, started + self.timeout)
        seconds = time.monotonic() - started
        attempts = taken.attempts_before + 1
        if result == "delivered":
            outcome, wait = "delivered", 0.0
        elif result != "endpoint_deleted" and attempts <= len(self.schedule):
            outcome, wait = "retry", self.schedule[attempts - 1]
        else:
            outcome, wait = "failed", 0.0
        with self.metrics.batch():
            recorded = self.store.end_attempt(delivery_id, taken, outcome, status_code, wait)
            if recorded is None:
                log.warning("delivery %s: attempt no longer owned the delivery; not counted", delivery_id)
                return AttemptResult("fenced")
            self.metrics.webhook_attempt(result, seconds)
            if outcome != "retry":
                self.metrics.webhook_delivery(outcome)
        if recorded.failing_since is not None:
            self._disable(taken.endpoint_id, recorded.failing_since)
        if outcome == "retry":
            log.info("delivery %s: attempt %d %s, next in %.0f s", delivery_id, attempts, result, wait)
            return AttemptResult("retry", wait, recorded.successor, recorded.waiting)
        log.info("delivery %s: %s after %d attempt(s)", delivery_id, outcome, attempts)
        return AttemptResult(outcome, None, recorded.successor, recorded.waiting)

    def _disable(self, endpoint_id: str, failing_since: float) -> None:
        endpoint = self.store.endpoint(endpoint_id)
        if endpoint is None or not endpoint.enabled:
            return
        failed = self.store.disable(endpoint, failing_since)
        if failed is not None:
            log.warning(
                "endpoint %s disabled: every attempt failed since %s; %d pending deliveries failed",
                endpoint_id,
                datetime.fromtimestamp(failing_since, UTC).isoformat(),
                failed,
            )

    def _send(self, attempt: Attempt, deadline: float) -> tuple[int | None, str]:
        """(status code, result) of one POST, over by `deadline` (monotonic); result is `delivered` or
        what went wrong, in a word."""
        endpoint = self.store.endpoint(attempt.endpoint_id)
        if endpoint is None:
            return None, "endpoint_deleted"
        try:
            target = target_of(endpoint.url, self.allowed_hosts, self.resolver, deadline - time.monotonic())
        except RefusedUrl as refused:
            log.warning("delivery to endpoint %s refused: %s", endpoint.id, refused)
            return None, "refused"
        # Redis's clock, as every process reads it: a worker's own clock may be minutes off, and
        # receivers refuse a timestamp more than five minutes from theirs
        moment = datetime.fromtimestamp(attempt.at, UTC)
        # during a rotation's overlap the new secret's signature first, then the old one's
        signature = " ".join(
            Webhook(secret).sign(attempt.event_id, moment, attempt.body.decode())
            for secret in endpoint.signing_secrets(attempt.at)
        )
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": attempt.event_id,
            "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": signature,
        }
        extensions = {"sni_hostname": target.host} if target.https and not is_address(target.host) else {}
        if deadline <= time.monotonic():
            return None, "timeout"
        bounded = start_attempt(deadline - time.monotonic())
        try:
            with self.http.stream(
                "POST", target.url, content=attempt.body, headers=headers, extensions=extensions
            ) as answer:
                status = answer.status_code
        except httpx.TimeoutException:
            return None, "timeout"
        except httpx.HTTPError as error:
            log.info("delivery to endpoint %s: %s", endpoint.id, type(error).__name__)
            return None, "unreachable"
        finally:
            end_attempt(bounded)
        if 200 <= status < 300:
            return status, "delivered"
        return status, f"{status // 100}xx"


def _not_now(reason: NoAttempt) -> AttemptResult:
    if reason.reason in ("wait", "rate"):
        return AttemptResult(reason.reason, reason.seconds)
    if reason.reason == "busy":  # another copy of the task is sending: look again after its lease
        return AttemptResult("busy", reason.seconds + 1.0)
    return AttemptResult(reason.reason)
