"""The upstream budget: every shim and worker process shares an Oktopost account's rate limit through Redis
(one budget per account, under that account's names).

Oktopost blocks an account for 15 minutes once it exceeds its burst limit, far longer than a token
lives, so the limit is never to be exceeded, not merely respected on average. Two Redis structures:

- the window (sorted set): one entry per call granted, scored by when the call *finished* (while in
  flight: by the latest moment it can finish). Counting calls whose end lies inside the last window,
  rather than their start, is what keeps the count at Oktopost (which sees arrivals somewhere between
  our start and our end) at or under the limit, whatever the network's jitter.
- the queue (sorted set): callers waiting for a slot, scored by priority. Verifications and
  completions are scored by their flow's deadline (earliest deadline first); new Step 1 calls come
  after all of them. A waiter that stops polling (its process died) drops out after a few seconds.

Both are changed only inside one Lua script, on Redis's clock, so several machines agree. That script
also honours the account's pause and counts its day (worker.account): no call is granted while the
account is paused, nor past the day's limit, and a new flow's Step 1 is granted only while the day
covers what the flows under way need plus the new flow's own calls.
Why not the `limits` library: its moving window answers "may I, now?" to whoever asks first; it has
no queue, so under contention the flow that dies first gets no precedence, and waiting means polling.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, ClassVar

import redis

from worker import scripts
from worker.account import ADMISSION_SECONDS, Account
from worker.errors import ThrottledError
from worker.events import ExpiredReason
from worker.keys import AccountNames

STEP1_PRIORITY = 1e12  # after every deadline-bound call (deadlines are epoch seconds, ~1.8e9)
STALE_WAITER_SECONDS = 3.0
MAX_POLL_SECONDS = 1.0  # a waiter re-checks at least this often (and so stays alive in the queue)


class NoBudgetInTime(Exception):
    """The budget cannot grant a call before the caller's deadline; `wait` is the least it would take."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        super().__init__(f"no upstream budget for {wait:.1f}s, past the deadline")


class AccountBlocked(NoBudgetInTime):
    """No call can be made for the account before the caller's give-up time: Oktopost has it blocked
    (the pause after a 429), or the day's calls are spent. `wait` is the time until that ends."""

    reason: ClassVar[ExpiredReason] = "upstream_blocked"


class AccountPaused(AccountBlocked):
    """The account is paused after a 429 until after the caller's give-up time."""


class DailyLimitSpent(AccountBlocked):
    """The day's calls (UTC) are spent, or cannot cover a new flow besides the flows under way; `wait`
    is the time until midnight UTC."""


_BLOCKED = {"paused": AccountPaused, "spent": DailyLimitSpent}


@dataclass(frozen=True, slots=True)
class Grant:
    waiter: str
    waited: float


class UpstreamBudget:
    def __init__(
        self,
        client: redis.Redis,
        names: AccountNames,
        limit: int,
        period: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
        daily_limit: int | None = None,
        block_seconds: float = 900.0,
    ) -> None:
        self.redis: Any = client  # redis-py annotates commands as sync-or-async; this is sync
        self.names = names
        self.limit = limit
        self.period = period
        self.sleep = sleep
        self.account = Account(client, names, daily_limit=daily_limit, block_seconds=block_seconds)
        self._acquire = scripts.register(client, "budget_acquire")
        self._finished = scripts.register(client, "budget_finished")

    def acquire(
        self,
        priority: float,
        give_up_at: float,
        hold: float,
        heartbeat: Callable[[], None] | None = None,
        admission: str = "",
    ) -> Grant:
        """Blocks until a call may start; `hold` bounds how long the call can take.

        Raises NoBudgetInTime as soon as the queue shows no slot before `give_up_at` (epoch seconds),
        and AccountBlocked when the account's pause or its day's count forbids any call until then.
        `heartbeat` is called before each wait, at least every MAX_POLL_SECONDS; what it raises ends the
        wait. `admission` (worker.account.admission_member) makes this a new flow's Step 1: granted only
        while the day covers it, and it reserves the flow's later calls until `release_admission`.
        """
        waiter = uuid.uuid4().hex
        started = time.monotonic()
        names = self.names
        keys = [
            names.budget_window,
            names.budget_queue,
            names.budget_alive,
            names.account_pause,
            names.reserved_calls,
            names.admissions,
        ]
        args: list[float | str] = [self.limit, self.period, hold, STALE_WAITER_SECONDS, give_up_at]
        daily = "" if self.account.daily_limit is None else self.account.daily_limit
        args += [daily, names.daily_calls_prefix, admission, ADMISSION_SECONDS]
        while True:
            answer = self._acquire(keys=keys, args=[waiter, priority, *args])
            verdict, value = _text(answer[0]), float(_text(answer[1]))
            if verdict == "granted":
                return Grant(waiter, time.monotonic() - started)
            if verdict == "doomed":
                raise NoBudgetInTime(value)
            if verdict in _BLOCKED:
                raise _BLOCKED[verdict](value)
            try:
                if heartbeat is not None:
                    heartbeat()
                self.sleep(min(value, MAX_POLL_SECONDS))
            except BaseException:  # the caller gave up waiting: its place goes to the next waiter now
                with suppress(redis.RedisError):
                    self.redis.zrem(self.names.budget_queue, waiter)
                raise

    def finished(self, grant: Grant, error: BaseException | None = None) -> None:
        """Scores the call by when it ended, which frees its slot one period later. A 429 (`error`)
        pauses the account first, so no process calls again before the pause is in Redis."""
        if isinstance(error, ThrottledError):
            self.account.pause(error.retry_after)
        self._finished(keys=[self.names.budget_window], args=[grant.waiter])

    @contextmanager
    def call(
        self,
        priority: float,
        give_up_at: float,
        hold: float,
        heartbeat: Callable[[], None] | None = None,
        defer_end_to: list[Grant] | None = None,
    ) -> Iterator[Grant]:
        """One call under the budget: acquired on entry, scored by its end on exit.

        With `defer_end_to`, a call that returns is added to that list instead, for the caller to
        record with `finished_all` once it has done what must come first (it stays counted a little
        longer meanwhile, which is safe); a call that raises is recorded at once, as a retry may need
        the room.
        """
        grant = self.acquire(priority, give_up_at, hold, heartbeat)
        try:
            yield grant
        except BaseException as error:
            self.finished_all([grant], error)
            raise
        if defer_end_to is not None:
            defer_end_to.append(grant)
        else:
            self.finished_all([grant])

    def finished_all(self, grants: list[Grant], error: BaseException | None = None) -> None:
        """`finished` for each; if Redis is away, a slot stays counted until its hold runs out: safe,
        only slower."""
        for grant in grants:
            with suppress(redis.RedisError):
                self.finished(grant, error)

    def backlog(self) -> int:
        """Calls waiting for a slot right now."""
        return int(self.redis.zcard(self.names.budget_queue))

    def rate(self) -> float:
        return self.limit / self.period


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
