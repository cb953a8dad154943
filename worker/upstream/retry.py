"""The retry policy, in one place: retry what the error tree calls transient, until the flow's deadline.

An okt token dies at an absolute moment, so every decision is measured against that deadline, never
against a count: an attempt starts only when it could finish in time, its timeout is at most the time
left, and a Retry-After is honoured only when waiting it still leaves time for an attempt. With the
shared budget (`admit`), a 429 has paused the whole account instead: the next admission waits the pause
out, or dooms the call at once when the pause outlives the deadline, so no call is made meanwhile. Refusals
(4xx, `Result: false`) are never retried, and nothing outside the Oktopost error tree is retried either
(Celery's own exceptions, bugs): they propagate untouched. The same policy drives the worker's sync
calls and the shim's async Step 1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    wait_random_exponential,
)

from worker.oktopost.errors import OktopostError, ThrottledError

T = TypeVar("T")
Admission = Callable[[], AbstractContextManager[object]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds of each attempt; the deadline itself comes from the flow."""

    max_attempt_seconds: float = 10.0  # OKTOPOST_TIMEOUT_SECONDS: no single call waits longer
    min_attempt_seconds: float = 0.25  # less time than this left cannot fit a round trip
    backoff_multiplier: float = 0.1  # exponential backoff with full jitter: 0.1 s, 0.2 s, 0.4 s ...
    backoff_max: float = 4.0


class DeadlineReached(Exception):
    """No attempt can finish before the deadline; `last_error` is the transient fault seen last, if any."""

    def __init__(self, attempts: int, last_error: OktopostError | None) -> None:
        self.attempts = attempts
        self.last_error = last_error
        reason = f"; last fault: {last_error}" if last_error else ""
        super().__init__(f"deadline reached after {attempts} attempt(s){reason}")


class _NoTimeLeft(Exception):
    """Raised inside the loop when the time left cannot fit an attempt; not an Oktopost error, not retried."""


def is_transient(error: BaseException) -> bool:
    return isinstance(error, OktopostError) and error.retryable


@dataclass(frozen=True, slots=True)
class _Schedule:
    """One call's own terms: its deadline, its clock, whom to tell of a retry. It travels to tenacity's
    callbacks as the attempt's argument, so one prepared `Retrying` serves every call."""

    deadline: float
    policy: RetryPolicy
    clock: Callable[[], float]
    on_retry: Callable[[OktopostError, float], None] | None
    paused_by_admission: bool = False  # a 429 pauses the account, and the admission waits that out

    def attempt_timeout(self) -> float:
        left = self.deadline - self.clock()
        if left < self.policy.min_attempt_seconds:
            raise _NoTimeLeft()
        return min(self.policy.max_attempt_seconds, left)


def _schedule_of(state: RetryCallState) -> _Schedule:
    schedule: _Schedule = state.args[0]
    return schedule


def _tenacity_kwargs(policy: RetryPolicy) -> dict[str, Any]:
    """The tenacity settings of a policy: when to retry, how long to wait, when to stop (each call's
    deadline is read from its `_Schedule`)."""
    backoff = wait_random_exponential(multiplier=policy.backoff_multiplier, max=policy.backoff_max)

    def wait(state: RetryCallState) -> float:
        schedule = _schedule_of(state)
        error = state.outcome.exception() if state.outcome else None
        throttled = error if isinstance(error, ThrottledError) else None
        if throttled is not None and throttled.retry_after is not None and not schedule.paused_by_admission:
            return throttled.retry_after  # Oktopost's word: honoured in full, or not at all (stop)
        # our own backoff never waits past the moment that still leaves time for one attempt:
        # a jittered 4 s near the deadline would otherwise give the flow up seconds early
        room = schedule.deadline - schedule.clock() - policy.min_attempt_seconds
        return max(0.0, min(float(backoff(state)), room))

    def stop(state: RetryCallState) -> bool:
        schedule = _schedule_of(state)
        return (
            schedule.clock() + (state.upcoming_sleep or 0.0) + policy.min_attempt_seconds > schedule.deadline
        )

    def before_sleep(state: RetryCallState) -> None:
        on_retry = _schedule_of(state).on_retry
        error = state.outcome.exception() if state.outcome else None
        if on_retry is not None and isinstance(error, OktopostError):
            on_retry(error, state.upcoming_sleep or 0.0)

    return {
        "retry": retry_if_exception(is_transient),
        "wait": wait,
        "stop": stop,
        "before_sleep": before_sleep,
        "reraise": False,
    }


@lru_cache(maxsize=16)
def _prepared(policy: RetryPolicy, sleep: Callable[[float], None]) -> Retrying:
    """One `Retrying` per policy and sleep, built once and reused by every call in every thread:
    tenacity keeps a call's state (attempt number, statistics) per thread."""
    return Retrying(sleep=sleep, **_tenacity_kwargs(policy))


def _attempts(retrying: Retrying | AsyncRetrying) -> int:
    return int(retrying.statistics.get("attempt_number", 1))


@contextmanager
def _outcome_of(retrying: Retrying | AsyncRetrying) -> Iterator[None]:
    """Turns how the loop ended into what callers see: DeadlineReached, or the refusal with .attempts."""
    try:
        yield
    except RetryError as exhausted:
        last = exhausted.last_attempt.exception()
        transient = last if isinstance(last, OktopostError) else None
        raise DeadlineReached(exhausted.last_attempt.attempt_number, transient) from None
    except _NoTimeLeft:
        raise DeadlineReached(_attempts(retrying) - 1, None) from None
    except OktopostError as refused:
        refused.attempts = _attempts(retrying)
        raise


def call_until_deadline(
    attempt: Callable[[float], T],
    deadline: float,
    *,
    policy: RetryPolicy = RetryPolicy(),
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[OktopostError, float], None] | None = None,
    admit: Admission | None = None,
) -> tuple[T, int]:
    """Calls `attempt(timeout_seconds)` until it succeeds; returns its result and the attempts made.

    `admit()` is entered around each attempt (the shared upstream budget: it may wait for a slot, or
    raise NoBudgetInTime, which is passed on as it is). Raises the refusal as it came (`RefusedError`,
    with `.attempts`), or `DeadlineReached`.
    """
    schedule = _Schedule(deadline, policy, clock, on_retry, paused_by_admission=admit is not None)

    def bounded_attempt(schedule: _Schedule) -> T:
        with admit() if admit is not None else nullcontext():
            return attempt(schedule.attempt_timeout())

    # The first attempt is made before tenacity's loop, which most calls never need (it costs a flow
    # about as much CPU as the attempt's own Redis call); a transient fault hands the call to the loop,
    # whose first attempt raises that same fault again, so the wait, the stop and the counts that follow
    # are tenacity's, exactly as if it had made the first attempt itself.
    try:
        return bounded_attempt(schedule), 1
    except _NoTimeLeft:
        raise DeadlineReached(0, None) from None
    except OktopostError as error:
        if not is_transient(error):
            error.attempts = 1
            raise
        first_fault: list[OktopostError] = [error]

    def attempt_after_the_first(schedule: _Schedule) -> T:
        if first_fault:
            raise first_fault.pop()
        return bounded_attempt(schedule)

    retrying = _prepared(policy, sleep)
    with _outcome_of(retrying):
        result = retrying(attempt_after_the_first, schedule)
    return result, _attempts(retrying)


async def acall_until_deadline(
    attempt: Callable[[float], Awaitable[T]],
    deadline: float,
    *,
    policy: RetryPolicy = RetryPolicy(),
    clock: Callable[[], float] = time.time,
    on_retry: Callable[[OktopostError, float], None] | None = None,
    admit: Callable[[], Awaitable[Callable[[BaseException | None], None]]] | None = None,
) -> tuple[T, int]:
    """The same policy for async callers (the shim's Step 1); `admit()` returns the call's `finished`,
    told the error the attempt raised, if any."""
    schedule = _Schedule(deadline, policy, clock, on_retry, paused_by_admission=admit is not None)
    # built for each call: the calls of one event loop share its thread, and so would a prepared one's state
    retrying = AsyncRetrying(sleep=asyncio.sleep, **_tenacity_kwargs(policy))

    async def bounded_attempt(schedule: _Schedule) -> T:  # a coroutine function, so tenacity awaits it
        finished = await admit() if admit is not None else None
        try:
            result = await attempt(schedule.attempt_timeout())
        except BaseException as error:
            if finished is not None:
                finished(error)
            raise
        if finished is not None:
            finished(None)
        return result

    with _outcome_of(retrying):
        result: T = await retrying(bounded_attempt, schedule)
    return result, _attempts(retrying)
