"""One delivery attempt: take it (fenced), check the endpoint's address again, sign with the Standard
Webhooks library, POST, record the outcome and say when the next attempt is due.

The answer decides: a 2xx is delivered; anything else, a timeout or a refused address is retried after
the next wait of WEBHOOK_RETRY_SCHEDULE, and after the last one the delivery is `failed`. Redirects are
not followed (a 3xx is a failed attempt): a redirect could lead anywhere, past the address check.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

from worker.observing.metrics import WorkerMetrics
from worker.webhooks.endpoints import Attempt, NoAttempt, WebhookStore
from worker.webhooks.urls import RefusedUrl, Resolver, resolve, target_of

log = logging.getLogger(__name__)

USER_AGENT = "oktopost-connect-webhooks/1"
# Deferred when this process already sends as many attempts as it may (to the endpoint, or in all)
DEFER_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What a task did, and in how many seconds it must run again (None: never)."""

    outcome: (
        str  # delivered | retry | failed | fenced | missing | over | wait | busy | deferred | held | rate
    )
    again_in: float | None = None
    successor: str = ""  # the flow's next delivery to the endpoint, whose turn it is now: queue its task


@dataclass
class Slots:
    """How many attempts this process sends at once, in all and to one endpoint, so that a slow or dead
    endpoint holds neither the threads that serve flows nor the other endpoints' deliveries."""

    total: int
    per_endpoint: int
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _busy: Counter[str] = field(default_factory=Counter)

    def take(self, endpoint_id: str) -> bool:
        with self._lock:
            if sum(self._busy.values()) >= self.total or self._busy[endpoint_id] >= self.per_endpoint:
                return False
            self._busy[endpoint_id] += 1
            return True

    def give_back(self, endpoint_id: str) -> None:
        with self._lock:
            self._busy[endpoint_id] -= 1
            if self._busy[endpoint_id] <= 0:
                del self._busy[endpoint_id]


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
        # no redirects; each phase (connect, write, read) bounded by the timeout, hence the lease below
        self.http = httpx.Client(
            timeout=httpx.Timeout(timeout), follow_redirects=False, transport=transport, trust_env=False
        )
        self.lease = 3 * timeout + 2.0

    def close(self) -> None:
        self.http.close()

    def attempt(self, delivery_id: str) -> AttemptResult:
        endpoint_id = delivery_id.partition(".")[0]
        if not self.slots.take(endpoint_id):
            # not lost, only waiting for a slot: the dispatcher must not queue it again meanwhile
            self.store.postpone_due(delivery_id, DEFER_SECONDS + self.lease)
            return AttemptResult("deferred", DEFER_SECONDS)
        try:
            return self._attempt(delivery_id)
        finally:
            self.slots.give_back(endpoint_id)

    def _attempt(self, delivery_id: str) -> AttemptResult:
        taken = self.store.begin_attempt(delivery_id, self.lease)
        if isinstance(taken, NoAttempt):
            if taken.reason in ("wait", "rate"):
                return AttemptResult(taken.reason, taken.seconds)
            if taken.reason == "busy":  # another copy of the task is sending: look again after its lease
                return AttemptResult("busy", taken.seconds + 1.0)
            return AttemptResult(taken.reason)
        started = time.monotonic()
        status_code, result = self._send(taken)
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
            return AttemptResult("retry", wait, recorded.successor)
        log.info("delivery %s: %s after %d attempt(s)", delivery_id, outcome, attempts)
        return AttemptResult(outcome, None, recorded.successor)

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

    def _send(self, attempt: Attempt) -> tuple[int | None, str]:
        """(status code, result) of one POST; result is `delivered` or what went wrong, in a word."""
        endpoint = self.store.endpoint(attempt.endpoint_id)
        if endpoint is None:
            return None, "endpoint_deleted"
        try:
            target = target_of(endpoint.url, self.allowed_hosts, self.resolver)
        except RefusedUrl as refused:
            log.warning("delivery to endpoint %s refused: %s", endpoint.id, refused)
            return None, "refused"
        # Redis's clock, as every deadline here: a worker whose clock is off signs no stale timestamp
        moment = datetime.fromtimestamp(attempt.at, UTC) if attempt.at else datetime.now(UTC)
        # during a rotation's overlap the new secret's signature first, then the old one's
        signature = " ".join(
            Webhook(secret).sign(attempt.event_id, moment, attempt.body.decode())
            for secret in endpoint.signing_secrets(moment.timestamp())
        )
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": attempt.event_id,
            "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": signature,
        }
        extensions = {"sni_hostname": target.host} if target.https and not _is_address(target.host) else {}
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
        if 200 <= status < 300:
            return status, "delivered"
        return status, f"{status // 100}xx"


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
