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

A worker's call that would wait longer than a moment does not wait in its thread: the task parks its
flow (worker.upstream.parking) and a worker's unparker releases it when a slot frees, with the slot
reserved in its name. Parked flows rank in the queue by their deadline as if they were in it.

Both are changed only inside one Lua script, on Redis's clock, so several machines agree. That script
also honours the account's pause and counts its day (worker.upstream.account): no call is granted while the
account is paused, nor past the day's limit, and a new flow's Step 1 is granted only while the day
covers what the flows under way need plus the new flow's own calls.
Why not the `limits` library: its moving window answers "may I, now?" to whoever asks first; it has
no queue, so under contention the flow that dies first gets no precedence, and waiting means polling.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, ClassVar

import redis

from worker import scripts
from worker.events import ExpiredReason
from worker.flows.store import BudgetAsk
from worker.keys import AccountNames
from worker.oktopost.errors import ThrottledError
from worker.replies import text
from worker.upstream.account import ADMISSION_SECONDS, Account

STEP1_PRIORITY = 1e12  # after every deadline-bound call (deadlines are epoch seconds, ~1.8e9)
STALE_WAITER_SECONDS = 3.0
MAX_POLL_SECONDS = 1.0  # a waiter re-checks at least this often (and so stays alive in the queue)


class NoBudgetNow(Exception):
    """No slot now, and the wait is long enough to be worth parking the flow for (`acquire`'s
    `park_after`); the caller has left the queue."""

    def __init__(self, wait: float, waiter: str) -> None:
        self.wait = wait
        self.waiter = waiter
        super().__init__(f"no upstream budget for {wait:.2f}s")


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


@dataclass(frozen=True, slots=True)
class Asked:
    """An ask made already (with the flow's take, `UpstreamBudget.first_ask`): its waiter and answer."""

    waiter: str
    answer: Any


def _verdict(answer: Any) -> tuple[float, bool] | None:
    """budget_acquire.lua's answer: None when granted, else the seconds to wait before asking again, and
    whether that is the wait for a reserved slot to free; raises when no call can be made in time."""
    verdict, value = text(answer[0]), float(text(answer[1]))
    if verdict == "granted":
        return None
    if verdict == "doomed":
        raise NoBudgetInTime(value)
    if verdict in _BLOCKED:
        raise _BLOCKED[verdict](value)
    return value, verdict == "reserved"


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
        # an ask's KEYS (budget_acquire.lua, and take_work.lua's first ask): the same for every ask
        self._ask_keys = (
            names.budget_window,
            names.budget_queue,
            names.budget_alive,
            names.account_pause,
            names.reserved_calls,
            names.admissions,
            names.parked_flows,
        )

    def acquire(
        self,
        priority: float,
        give_up_at: float,
        hold: float,
        heartbeat: Callable[[], None] | None = None,
        admission: str = "",
        *,
        park_after: float | None = None,
        slot: str = "",
        asked: Asked | None = None,
    ) -> Grant:
        """Blocks until a call may start; `hold` bounds how long the call can take.

        Raises NoBudgetInTime as soon as the queue shows no slot before `give_up_at` (epoch seconds),
        and AccountBlocked when the account's pause or its day's count forbids any call until then.
        `heartbeat` is called before each wait, at least every MAX_POLL_SECONDS; what it raises ends the
        wait. `admission` (worker.upstream.account.admission_member) makes this a new flow's Step 1:
        granted only while the day covers it, and it reserves the flow's later calls until
        `release_admission`. With `park_after`, a wait longer than that raises NoBudgetNow instead (the
        caller parks its flow); `slot` is the slot a released parked flow was given, granted if still
        held, once it frees. `asked`: the first ask, made already with the flow's take (`first_ask`).
        """
        waiter = asked.waiter if asked is not None else secrets.token_hex(16)
        answer = asked.answer if asked is not None else None
        started = time.monotonic()
        while True:
            if answer is None:
                answer = self._ask(waiter, priority, give_up_at, hold, admission, slot)
            verdict, answer = _verdict(answer), None
            if verdict is None:
                return Grant(waiter, time.monotonic() - started)
            wait, reserved = verdict
            try:
                # a reserved slot that frees in a moment is waited for here, never parked for
                if park_after is not None and wait > park_after and not reserved:
                    raise NoBudgetNow(wait, waiter)
                if heartbeat is not None:
                    heartbeat()
                self.sleep(min(wait, MAX_POLL_SECONDS))
            except BaseException:  # the caller gave up waiting: its place goes to the next waiter now
                self._leave(waiter)
                raise

    async def acquire_async(
        self,
        priority: float,
        give_up_at: Callable[[], float],
        hold: float,
        run: Callable[[Callable[[], float | None]], Awaitable[float | None]],
        admission: str = "",
    ) -> Grant:
        """`acquire` for an event loop: each ask is one Redis call made through `run` (a thread pool),
        and the waits between asks are the loop's, so a waiting caller holds no thread. `give_up_at`
        is read once, in the first ask's thread (it may read Redis's clock)."""
        waiter = secrets.token_hex(16)
        started = time.monotonic()
        until: list[float] = []

        def ask() -> float | None:
            if not until:
                until.append(give_up_at())
            verdict = _verdict(self._ask(waiter, priority, until[0], hold, admission, ""))
            return None if verdict is None else verdict[0]

        try:
            while True:
                wait = await run(ask)
                if wait is None:
                    return Grant(waiter, time.monotonic() - started)
                await asyncio.sleep(min(wait, MAX_POLL_SECONDS))
        except asyncio.CancelledError:  # the request went away: its place goes to the next waiter
            self._leave(waiter)
            raise

    def first_ask(self, give_up_before: float, hold: float) -> tuple[BudgetAsk, str]:
        """The ask of a flow's first call, for the flow's take to make in its own call (a flow's task
        always asks next): its priority is the flow's deadline, its give-up time `give_up_before` that,
        its slot the one the flow was released from parking with. Returns it and its waiter id; hand the
        answer to `acquire` as `Asked`, or to `unused` if it is never used."""
        waiter = secrets.token_hex(16)
        args = self._ask_args(waiter, "", "", hold, "", "")
        return BudgetAsk(self.names.account_id, self._ask_keys, tuple(args), give_up_before), waiter

    def unused(self, asked: Asked) -> None:
        """An ask made for a call that was never made: its slot, or its place in the queue, goes back."""
        with suppress(redis.RedisError):
            if _verdict(asked.answer) is None:
                self._finished(keys=[self.names.budget_window], args=[asked.waiter, self.period])
            else:
                self._leave(asked.waiter)

    def _ask(
        self, waiter: str, priority: float, give_up_at: float, hold: float, admission: str, slot: str
    ) -> Any:
        """One ask: budget_acquire.lua's answer."""
        return self._acquire(
            keys=self._ask_keys, args=self._ask_args(waiter, priority, give_up_at, hold, admission, slot)
        )

    def _ask_args(
        self,
        waiter: str,
        priority: float | str,
        give_up_at: float | str,
        hold: float,
        admission: str,
        slot: str,
    ) -> list[float | str]:
        daily = "" if self.account.daily_limit is None else self.account.daily_limit
        args: list[float | str] = [waiter, priority, self.limit, self.period, hold, STALE_WAITER_SECONDS]
        return [*args, give_up_at, daily, self.names.daily_calls_prefix, admission, ADMISSION_SECONDS, slot]

    def _leave(self, waiter: str) -> None:
        with suppress(redis.RedisError):
            self.redis.zrem(self.names.budget_queue, waiter)

    def finished(self, grant: Grant, error: BaseException | None = None) -> None:
        """Scores the call by when it ended, which frees its slot one period later. A 429 (`error`)
        pauses the account first, so no process calls again before the pause is in Redis."""
        if isinstance(error, ThrottledError):
            self.account.pause(error.retry_after)
        self._finished(keys=[self.names.budget_window], args=[grant.waiter, self.period])

    @contextmanager
    def call(
        self,
        priority: float,
        give_up_at: float,
        hold: float,
        heartbeat: Callable[[], None] | None = None,
        defer_end_to: list[Grant] | None = None,
        *,
        park_after: float | None = None,
        slot: str = "",
        asked: Asked | None = None,
    ) -> Iterator[Grant]:
        """One call under the budget: acquired on entry, scored by its end on exit.

        With `defer_end_to`, a call that returns is added to that list instead, for the caller to
        record with `finished_all` once it has done what must come first (it stays counted a little
        longer meanwhile, which is safe); a call that raises is recorded at once, as a retry may need
        the room.
        """
        grant = self.acquire(
            priority, give_up_at, hold, heartbeat, park_after=park_after, slot=slot, asked=asked
        )
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
