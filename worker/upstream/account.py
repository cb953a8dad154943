"""The Oktopost account as a whole: its pause after a 429 and its daily count, shared through Redis.

Oktopost blocks an account that exceeds its burst limit for 15 minutes, and the account is shared with
the partner's other integrations, so a 429 can come however carefully we count. The first process that
gets one pauses the account for every process (until Retry-After, else OKTOPOST_BLOCK_SECONDS): the
budget's script makes no call while the pause lasts, dooms at once a caller whose give-up time comes
first, and the worker's sweeper notices the end and logs it. The day's calls (UTC) are counted in the
same script when a call is granted; a new flow is admitted only while the day still covers what the
flows under way need (a counter the flow transitions keep) plus its own calls.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from worker import scripts
from worker.events import utc_timestamp
from worker.keys import AccountNames
from worker.replies import text

log = logging.getLogger(__name__)

DAY_SECONDS = 86400
# a new flow's own calls (Step 1, verify and, for pages and groups, the PUT); retries are not reserved
CALLS_PER_FLOW = {"profile": 2, "page": 3, "group": 3}
ADMISSION_SECONDS = 60.0  # a Step 1 that never creates its flow (its shim died) gives its calls back then
RAMP_SECONDS = 60.0  # after a pause, parked flows go out gradually for at most this long (parking)


def utc_day(now: float) -> int:
    """The UTC day of an epoch second, counted from the epoch (the day counter's name)."""
    return int(now // DAY_SECONDS)


def seconds_to_midnight(now: float) -> float:
    """Seconds from `now` until the next midnight UTC, when the daily count starts again."""
    return (utc_day(now) + 1) * DAY_SECONDS - now


def admission_member(flow_id: str, entity_type: str) -> str:
    """The admission a new flow's Step 1 holds: the calls it needs after Step 1, and its id."""
    return f"{CALLS_PER_FLOW[entity_type] - 1}:{flow_id}"


@dataclass(frozen=True, slots=True)
class Standing:
    """The account right now, on Redis's clock."""

    paused_until: float | None  # epoch seconds, while a pause is in force
    used_today: int
    reserved: int  # calls the flows under way (and new flows mid Step 1) still need
    daily_limit: int | None
    parked: int = (
        0  # flows waiting for the account's budget without a worker thread (worker.upstream.parking)
    )

    @property
    def remaining_today(self) -> int | None:
        return None if self.daily_limit is None else max(0, self.daily_limit - self.used_today)


class Account:
    """The pause and the daily count of one Oktopost account (tenants on that account share them)."""

    def __init__(
        self, client: redis.Redis, names: AccountNames, *, daily_limit: int | None, block_seconds: float
    ) -> None:
        self.redis: Any = client  # redis-py annotates commands as sync-or-async; this is sync
        self.names = names
        self.daily_limit = daily_limit
        self.block_seconds = block_seconds
        self._pause = scripts.register(client, "account_pause")
        self._resume = scripts.register(client, "account_resume")
        self._release = scripts.register(client, "admission_release")

    def pause(self, retry_after: float | None) -> float:
        """Oktopost answered 429: pauses the account for every process until Retry-After when given,
        else for `block_seconds`; returns the pause's end (the later one, when one was in force)."""
        seconds = self.block_seconds if retry_after is None else max(0.0, retry_after)
        answer = self._pause(
            keys=[self.names.account_pause, self.names.worker_metrics, self.names.resume_ramp],
            args=[seconds, self.names.pauses_field, RAMP_SECONDS],
        )
        entered, ends = int(answer[0]), float(text(answer[1]))
        if entered:
            log.warning(
                "Oktopost answered 429: no call for account %s until %s (%.0f s, %s)",
                self.names.account_id,
                utc_timestamp(ends),
                seconds,
                "its Retry-After" if retry_after is not None else "OKTOPOST_BLOCK_SECONDS",
            )
        return ends

    def resume_if_over(self) -> bool:
        """True, and one log line, for the one caller that finds the pause over."""
        if int(self._resume(keys=[self.names.account_pause], args=[])):
            log.warning("account %s: its pause is over, calls to Oktopost resume", self.names.account_id)
            return True
        return False

    def release_admission(self, member: str) -> None:
        """A new flow's Step 1 is over: its flow, once created, holds its own reservation."""
        self._release(keys=[self.names.admissions, self.names.reserved_calls], args=[member])

    def standing(self) -> Standing:
        seconds, microseconds = self.redis.time()
        now = int(seconds) + int(microseconds) / 1_000_000
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.names.account_pause)
            pipe.get(self.names.daily_calls(utc_day(now)))
            pipe.get(self.names.reserved_calls)
            pipe.zcard(self.names.parked_flows)
            ends, used, reserved, parked = pipe.execute()
        paused_until = float(ends) if ends is not None and float(ends) > now else None
        reserved_calls = max(0, int(reserved or 0))
        return Standing(paused_until, int(used or 0), reserved_calls, self.daily_limit, int(parked))

    def pauses_entered(self) -> int:
        return int(self.redis.hget(self.names.worker_metrics, self.names.pauses_field) or 0)


def retry_after_header(seconds: float) -> dict[str, str]:
    """`Retry-After` in whole seconds, never 0 (a caller told 0 would come straight back)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class AccountCollector(Collector):
    """Each configured account's pause and daily count on /metrics (label `account`), read from Redis at
    scrape time. The accounts come from configuration only, so no request can add a series."""

    def __init__(self, accounts: list[Account]) -> None:
        self.accounts = accounts

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        paused = GaugeMetricFamily(
            "okc_account_paused",
            "1 while the Oktopost account is paused after a 429, else 0",
            labels=["account"],
        )
        pauses = CounterMetricFamily(
            "okc_account_pauses", "Pauses of the Oktopost account entered after a 429", labels=["account"]
        )
        used = GaugeMetricFamily(
            "okc_account_daily_calls_used", "Calls made to Oktopost today (UTC)", labels=["account"]
        )
        reserved = GaugeMetricFamily(
            "okc_account_calls_reserved",
            "Calls the flows under way still need (admission control keeps them free)",
            labels=["account"],
        )
        remaining = GaugeMetricFamily(
            "okc_account_daily_calls_remaining",
            "Calls to Oktopost left today (UTC) under the account's daily limit",
            labels=["account"],
        )
        parked = GaugeMetricFamily(
            "okc_account_flows_parked",
            "Flows waiting for the account's budget, parked in Redis (they hold no worker thread)",
            labels=["account"],
        )
        for account in self.accounts:
            try:
                standing = account.standing()
                entered = account.pauses_entered()
            except redis.RedisError:
                return
            label = [account.names.account_id]
            paused.add_metric(label, 1 if standing.paused_until is not None else 0)
            pauses.add_metric(label, entered)
            used.add_metric(label, standing.used_today)
            reserved.add_metric(label, standing.reserved)
            parked.add_metric(label, standing.parked)
            if standing.remaining_today is not None:
                remaining.add_metric(label, standing.remaining_today)
        yield from (paused, pauses, used, reserved, remaining, parked)
