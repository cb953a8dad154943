"""Health checks: every CONNECTION_CHECK_SECONDS, one process at a time per Oktopost account reads every
page of `GET /v2/credential?includeInvalid=1` and compares it with the account's connections.

Only spare budget: each call asks `connection_check_slot.lua`, which grants it only while no flow of
the account waits for budget and within CONNECTION_CHECK_SHARE of the rate and daily limits; a granted
call counts in the account's budget like a flow's. A connection not listed is read once more by id
before it counts as deleted upstream (a listing that shifted between pages must not delete anything).
A check that fails anywhere (transport, 5xx, 429, malformed, `Result: false`, its lock lost) changes
nothing; its changes are applied in `connection_check.lua` steps fenced by its lock, each status change
with its event.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from worker import scripts
from worker.connections.records import STATUSES, ConnectionStore, status_of
from worker.events import new_event_id, utc_timestamp
from worker.keys import AccountNames, RedisNames
from worker.oktopost import CredentialPage, OktopostClient
from worker.oktopost.errors import OktopostError, RejectedError
from worker.upstream.budget import STALE_WAITER_SECONDS, Grant, UpstreamBudget
from worker.upstream.clients import Upstream

log = logging.getLogger(__name__)

PAGE_SIZE = 100
GIVE_UP_SECONDS = 120.0  # a check that found no spare budget for this long fails (tried next period)
APPLY_BATCH = 200  # connections per Lua step when a check's findings are applied
CHECKS_AT_ONCE = 16  # accounts' checks one worker process runs together (most of their time is waiting)


class CheckOutcome(StrEnum):
    OK = "ok"
    FAILED = "failed"  # a fault, a lost lock or no spare budget in time: nothing changed
    # not checked: not due, another process checks it, or the account is paused (not counted)
    SKIPPED = "skipped"


class CheckFailed(Exception):
    """The check cannot finish; it changes nothing."""


@dataclass(frozen=True, slots=True)
class CheckSettings:
    period: float  # seconds between an account's checks; 0: no checks
    share: float  # of the account's rate and daily limits, at most
    call_seconds: float = 10.0  # one check call's timeout (OKTOPOST_TIMEOUT_SECONDS), and its slot's hold

    @property
    def lock_seconds(self) -> float:
        """A check's lock lives this long past its last sign of life (renewed before every call): longer
        than any call, so only a check whose process died or stalled loses it."""
        return 3 * self.call_seconds + 2


class TakenCheck(NamedTuple):
    """An account's check whose lock this process holds, to be run (`ConnectionChecker.finish`)."""

    upstream: Upstream[OktopostClient]
    fence: str
    began_ms: int


class ConnectionChecker:
    """Checks the accounts with connections whose check is due; any process may run one."""

    def __init__(
        self,
        store: ConnectionStore,
        upstream_of: Callable[[str], Upstream[OktopostClient] | None],
        settings: CheckSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.names: RedisNames = store.names
        self.redis: Any = store.redis
        self.upstream_of = upstream_of
        self.settings = settings
        self.sleep = sleep
        self._lock = scripts.register(self.redis, "connection_check_lock")
        self._slot = scripts.register(self.redis, "connection_check_slot")
        self._apply = scripts.register(self.redis, "connection_check")
        self._ended = scripts.register(self.redis, "budget_finished")

    @property
    def _lock_ms(self) -> int:
        return int(self.settings.lock_seconds * 1000)

    def check(self, upstream: Upstream[OktopostClient]) -> CheckOutcome:
        """The account's check, taken and run here when it is due (else SKIPPED)."""
        taken = self.take(upstream)
        return CheckOutcome.SKIPPED if taken is None else self.finish(taken)

    def take(self, upstream: Upstream[OktopostClient]) -> TakenCheck | None:
        """The account's check, when it is due and no process runs it (its lock taken); else None."""
        names = self.names.account(upstream.account_id)
        taken = self._lock(keys=_lock_keys(names), args=["take", "", self._lock_ms, self.settings.period])
        if _text(taken[0]) != "taken":
            return None
        return TakenCheck(upstream, _text(taken[1]), int(_text(taken[2])))

    def finish(self, taken: TakenCheck) -> CheckOutcome:
        """Runs a taken check to its end (it may wait up to GIVE_UP_SECONDS for spare budget) and
        releases its lock."""
        upstream, fence, began_ms = taken
        names = self.names.account(upstream.account_id)
        started = time.monotonic()
        try:
            changes = self._run(upstream, names, fence, began_ms)
        except (CheckFailed, OktopostError, redis.RedisError) as failure:
            log.info("connection check of account %s failed: %s", upstream.account_id, failure)
            self._count(upstream.account_id, CheckOutcome.FAILED)
            return CheckOutcome.FAILED
        finally:
            self._release(names, fence)
        log.info("connection check of account %s: %d changes", upstream.account_id, changes)
        self._count(upstream.account_id, CheckOutcome.OK, time.monotonic() - started)
        return CheckOutcome.OK

    def _run(self, upstream: Upstream[OktopostClient], names: AccountNames, fence: str, began_ms: int) -> int:
        listed = self._list_all(upstream, fence)
        members = self.store.members(upstream.account_id)
        seen: list[tuple[str, str, str]] = []
        for tenant, connection_id in members:
            status = listed.get(connection_id) or self._read_one(upstream, fence, connection_id)
            seen.append((tenant, connection_id, status))
        return self._record(names, fence, began_ms, seen)

    def _list_all(self, upstream: Upstream[OktopostClient], fence: str) -> dict[str, str]:
        """Every credential of the account, id -> valid | invalid, read page by page."""
        statuses: dict[str, str] = {}
        page, pages = 0, 1
        while page < pages:
            answer = self._call(upstream, fence, _listing(upstream.client, page, self.settings.call_seconds))
            for credential in answer.items:
                statuses[credential.id] = status_of(credential.status)
            pages = max(1, math.ceil(answer.total / PAGE_SIZE))
            page += 1
        return statuses

    def _read_one(self, upstream: Upstream[OktopostClient], fence: str, connection_id: str) -> str:
        """A connection the listing left out, read by id: "gone" only when Oktopost answers 404."""
        try:
            credential = self._call(
                upstream,
                fence,
                lambda: upstream.client.get_credential(connection_id, timeout=self.settings.call_seconds),
            )
        except RejectedError as refused:
            if refused.status == 404:
                return "gone"
            raise
        return status_of(credential.status)

    def _call(self, upstream: Upstream[OktopostClient], fence: str, call: Callable[[], Any]) -> Any:
        budget = upstream.budget
        call_id = f"check:{uuid.uuid4().hex}"
        self._renew(budget.names, fence)
        self._wait_for_slot(budget, fence, call_id)
        error: BaseException | None = None
        try:
            return call()
        except BaseException as failure:
            error = failure
            raise
        finally:
            budget.finished_all([Grant(call_id, 0.0)], error)  # a 429 pauses the account, as a flow's
            with suppress(redis.RedisError):  # else it leaves the checks' window after its hold
                self._ended(keys=[budget.names.check_window], args=[call_id])

    def _wait_for_slot(self, budget: UpstreamBudget, fence: str, call_id: str) -> None:
        names = budget.names
        give_up_at = time.monotonic() + GIVE_UP_SECONDS
        daily = "" if budget.account.daily_limit is None else budget.account.daily_limit
        while True:
            answer = self._slot(
                keys=[
                    names.budget_window,
                    names.budget_alive,
                    names.parked_flows,
                    names.early_slots,
                    names.account_pause,
                    names.check_window,
                    names.check_lock,
                    names.reserved_calls,
                ],
                args=[
                    call_id,
                    fence,
                    budget.limit,
                    budget.period,
                    self.settings.call_seconds,
                    self.settings.share,
                    daily,
                    names.daily_calls_prefix,
                    names.check_daily_prefix,
                    STALE_WAITER_SECONDS,
                ],
            )
            verdict, wait = _text(answer[0]), float(_text(answer[1]))
            if verdict == "granted":
                return
            if verdict != "wait":
                raise CheckFailed(f"no spare budget: {verdict}")
            if time.monotonic() + wait > give_up_at:
                raise CheckFailed(f"no spare budget within {GIVE_UP_SECONDS:g} s")
            self._renew(names, fence)
            self.sleep(min(wait, 1.0))

    def _record(
        self, names: AccountNames, fence: str, began_ms: int, seen: list[tuple[str, str, str]]
    ) -> int:
        changes, at = 0, utc_timestamp()
        for batch in _batches(seen, APPLY_BATCH):
            args: list[str | int] = [
                fence,
                at,
                began_ms,
                self.names.all_events_channel,
                self.names.connection_channel(""),
                self.store.retention * 1000,
            ]
            for tenant, connection_id, status in batch:
                args += [
                    tenant,
                    connection_id,
                    status,
                    self.names.tenant_connections(tenant),
                    self.names.tenant_connection_order(tenant),
                    self.names.tenant_channel(tenant),
                ]
            args += [new_event_id() for _ in batch]  # each change's event id
            keys = [
                names.check_lock,
                self.names.all_events_stream,
                names.connections,
                self.names.connection_counts,
            ]
            answer = self._apply(keys=keys, args=args)
            if _text(answer[0]) != "ok":
                raise CheckFailed("another check holds the account now")
            changes += int(answer[1])
        return changes

    def _renew(self, names: AccountNames, fence: str) -> None:
        answer = self._lock(keys=_lock_keys(names), args=["renew", fence, self._lock_ms, 0])
        if _text(answer[0]) != "ok":
            raise CheckFailed("the check's lock was lost")

    def _release(self, names: AccountNames, fence: str) -> None:
        with suppress(redis.RedisError):  # else the lock lapses by itself
            self._lock(keys=_lock_keys(names), args=["release", fence, 0, 0])

    def _count(self, account: str, outcome: CheckOutcome, seconds: float | None = None) -> None:
        with suppress(redis.RedisError):  # metrics never break a check
            self.redis.hincrby(self.names.worker_metrics, check_field(account, outcome), 1)
            if seconds is not None:  # a successful check's time, from its lock to its last change
                self.redis.hincrbyfloat(self.names.worker_metrics, check_seconds_field(account), seconds)


def check_field(account: str, outcome: str) -> str:
    """The field of the workers' metrics hash that counts an account's checks of one outcome."""
    return f"check|{account}|{outcome}"


def check_seconds_field(account: str) -> str:
    """The field of the workers' metrics hash adding up the time of an account's successful checks."""
    return f"checktime|{account}|sum"


def _listing(client: OktopostClient, page: int, timeout: float) -> Callable[[], CredentialPage]:
    return lambda: client.list_credentials(page, PAGE_SIZE, include_invalid=True, timeout=timeout)


def _lock_keys(names: AccountNames) -> list[str]:
    return [names.check_lock, names.check_fence, names.check_due, names.account_pause]


def _batches(items: list[tuple[str, str, str]], size: int) -> Iterator[list[tuple[str, str, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ConnectionCollector(Collector):
    """`okc_connections{account,status}` and `okc_connection_checks_total{account,outcome}` at scrape
    time, from the store and the workers' metrics hash."""

    def __init__(self, store: ConnectionStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        connections = GaugeMetricFamily(
            "okc_connections", "Connections by Oktopost account and status", labels=["account", "status"]
        )
        checks = CounterMetricFamily(
            "okc_connection_checks", "Connection checks by account and outcome", labels=["account", "outcome"]
        )
        try:
            by_status: dict[tuple[str, str], int] = {
                (account, status): 0 for account in self.store.accounts() for status in STATUSES
            }
            by_status.update(self.store.counts())  # both statuses of every account, 0 when none
            for (account, status), count in by_status.items():
                connections.add_metric([account, status], count)
            counted = self.store.redis.hgetall(self.store.names.worker_metrics)
        except redis.RedisError:
            return
        for field, value in counted.items():
            kind, _, rest = _text(field).partition("|")
            account, _, outcome = rest.rpartition("|")
            if kind == "check" and account:
                checks.add_metric([account, outcome], float(_text(value)))
        yield connections
        yield checks


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class CheckLoop:
    """A worker's thread that starts the checks of the accounts whose check is due (each at most once a
    period, one process at a time) and queues again deletions whose task was lost. Each check runs in a
    thread of its own, at most `at_once` together: one account's check that waits minutes for spare
    budget holds back no other account's."""

    def __init__(
        self,
        checker: ConnectionChecker,
        requeue_deletion: Callable[[str, str], None],
        *,
        tick: float = 1.0,
        lost_after: float = 120.0,
        at_once: int = CHECKS_AT_ONCE,
    ) -> None:
        self.checker = checker
        self.requeue_deletion = requeue_deletion
        self.tick = tick
        self.lost_after = lost_after  # a deletion asked for this long ago and still there lost its task
        self.at_once = at_once
        self._checks: dict[str, threading.Thread] = {}  # account -> its check running here
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oktopost-connection-checks", daemon=True)
        checker.sleep = self._pause  # a check waiting for spare budget ends as soon as the worker stops

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        ends = time.monotonic() + 2  # a check waiting for budget ends at once (`_pause`); one in a call
        for check in list(self._checks.values()):  # is left to the process's exit (a daemon thread)
            check.join(timeout=max(0.0, ends - time.monotonic()))

    def _pause(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise CheckFailed("the worker is stopping")

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                if self.checker.settings.period > 0:
                    self._start_due()
                self._requeue_deletions()
            except Exception as error:  # Redis away: try again next tick
                log.warning("connection checks failed: %s", type(error).__name__)

    def _start_due(self) -> None:
        """Takes the due checks of the accounts whose check is not running here, and starts each."""
        self._checks = {account: check for account, check in self._checks.items() if check.is_alive()}
        for account in self.checker.store.accounts():
            if len(self._checks) >= self.at_once or self._stop.is_set():
                return
            if account in self._checks:
                continue
            upstream = self.checker.upstream_of(account)
            taken = self.checker.take(upstream) if upstream is not None else None
            if taken is None:
                continue
            check = threading.Thread(
                target=self._finish, args=(taken,), name="oktopost-connection-check", daemon=True
            )
            self._checks[account] = check
            check.start()

    def _finish(self, taken: TakenCheck) -> None:
        try:
            self.checker.finish(taken)
        except Exception as error:  # Redis away: its lock lapses, and the check is tried again
            log.warning("connection check failed: %s", type(error).__name__)

    def _requeue_deletions(self) -> None:
        store = self.checker.store
        now_ms = int(time.time() * 1000)
        for tenant, connection_id in store.deletions_due(now_ms - int(self.lost_after * 1000)):
            store.touch_deletion(tenant, connection_id, now_ms)
            self.requeue_deletion(tenant, connection_id)
