"""The deadline-driven retry policy, with a fake clock: what is retried, when it stops, Retry-After."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.support.clocks import FakeClock
from worker.oktopost.errors import (
    MalformedAnswerError,
    OktopostError,
    RejectedError,
    ServerError,
    ThrottledError,
    TokenInvalidError,
    UnauthorizedError,
    UpstreamTransportError,
)
from worker.upstream import retry
from worker.upstream.retry import DeadlineReached, RetryPolicy, acall_until_deadline, call_until_deadline


class Failing:
    """An attempt that raises `errors` in turn and then answers `then`, recording each timeout given;
    with a clock, each attempt costs `cost` seconds of it (never more than its timeout)."""

    def __init__(
        self, *errors: Exception, then: str = "ok", clock: FakeClock | None = None, cost: float = 0.0
    ) -> None:
        self.remaining = list(errors)
        self.then = then
        self.clock = clock
        self.cost = cost
        self.timeouts: list[float] = []

    def __call__(self, timeout: float) -> str:
        self.timeouts.append(timeout)
        if self.clock is not None:
            self.clock.now += min(self.cost, timeout)  # a real attempt never outlives its timeout
        if self.remaining:
            raise self.remaining.pop(0)
        return self.then


@pytest.mark.parametrize(
    "transient",
    [
        UpstreamTransportError("read timeout"),
        MalformedAnswerError("not JSON"),
        ServerError(503),
        ThrottledError(None),
    ],
)
def test_transient_faults_are_retried_until_success(transient: Exception) -> None:
    clock = FakeClock()
    result, attempts = call_until_deadline(
        Failing(transient, transient), clock.now + 30, clock=clock, sleep=clock.sleep
    )
    assert (result, attempts) == ("ok", 3)
    assert len(clock.sleeps) == 2


@pytest.mark.parametrize(
    "refusal",
    [RejectedError(["nope"], status=400), TokenInvalidError(["gone"], status=404), UnauthorizedError(401)],
)
def test_refusals_are_never_retried(refusal: OktopostError) -> None:
    clock = FakeClock()
    attempt = Failing(refusal)
    with pytest.raises(type(refusal)) as raised:
        call_until_deadline(attempt, clock.now + 30, clock=clock, sleep=clock.sleep)
    assert raised.value.attempts == 1
    assert clock.sleeps == []


def test_exceptions_outside_the_tree_propagate_untouched() -> None:
    class CeleryRetry(Exception):
        pass

    clock = FakeClock()
    with pytest.raises(CeleryRetry):
        call_until_deadline(Failing(CeleryRetry()), clock.now + 30, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []


def test_stops_before_an_attempt_that_could_not_finish() -> None:
    clock = FakeClock()
    deadline = clock.now + 5
    errors = [ServerError(503)] * 1000
    attempt = Failing(*errors, clock=clock, cost=0.5)
    with pytest.raises(DeadlineReached) as raised:
        call_until_deadline(attempt, deadline, clock=clock, sleep=clock.sleep)
    assert clock.now <= deadline
    assert raised.value.attempts >= 3
    assert isinstance(raised.value.last_error, ServerError)
    # every attempt was given at most the time left
    assert all(t <= 5 for t in attempt.timeouts)


def test_attempt_timeout_is_bounded_by_time_left() -> None:
    clock = FakeClock()
    attempt = Failing()
    call_until_deadline(
        attempt, clock.now + 1.5, policy=RetryPolicy(max_attempt_seconds=10), clock=clock, sleep=clock.sleep
    )
    assert attempt.timeouts == [1.5]
    attempt = Failing()
    call_until_deadline(
        attempt, clock.now + 100, policy=RetryPolicy(max_attempt_seconds=10), clock=clock, sleep=clock.sleep
    )
    assert attempt.timeouts == [10]


def test_backoff_is_cut_short_to_leave_time_for_one_more_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda _low, high: high)  # the jitter at its longest
    clock = FakeClock()
    deadline = clock.now + 3.0
    policy = RetryPolicy(backoff_multiplier=100.0, backoff_max=100.0)  # a backoff far past the deadline
    attempt = Failing(ServerError(503), clock=clock, cost=0.5)
    result, attempts = call_until_deadline(attempt, deadline, policy=policy, clock=clock, sleep=clock.sleep)
    assert (result, attempts) == ("ok", 2)
    assert clock.sleeps == [pytest.approx(3.0 - 0.5 - policy.min_attempt_seconds)]
    assert attempt.timeouts[-1] == pytest.approx(policy.min_attempt_seconds)


def test_retry_after_is_honoured_when_it_fits() -> None:
    clock = FakeClock()
    call_until_deadline(Failing(ThrottledError(7.0)), clock.now + 30, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [7.0]


def test_retry_after_past_the_deadline_stops_at_once() -> None:
    clock = FakeClock()
    with pytest.raises(DeadlineReached) as raised:
        call_until_deadline(Failing(ThrottledError(60.0)), clock.now + 30, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []
    assert isinstance(raised.value.last_error, ThrottledError)


def test_no_time_left_means_no_attempt() -> None:
    clock = FakeClock()
    attempt = Failing()
    with pytest.raises(DeadlineReached) as raised:
        call_until_deadline(attempt, clock.now + 0.1, clock=clock, sleep=clock.sleep)
    assert raised.value.attempts == 0
    assert attempt.timeouts == []


def test_async_variant_follows_the_same_policy() -> None:
    calls: list[float] = []

    async def attempt(timeout: float) -> str:
        calls.append(timeout)
        if len(calls) < 3:
            raise ServerError(502)
        return "redirect"

    policy = RetryPolicy(backoff_multiplier=0.001, backoff_max=0.01)
    import time

    result, attempts = asyncio.run(acall_until_deadline(attempt, time.time() + 5, policy=policy))
    assert (result, attempts) == ("redirect", 3)

    async def refused(_timeout: float) -> str:
        raise RejectedError(["bad network"], status=400)

    with pytest.raises(RejectedError):
        asyncio.run(acall_until_deadline(refused, time.time() + 5, policy=policy))


def test_a_first_attempt_that_answers_never_enters_tenacitys_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loop(*_: object) -> None:
        raise AssertionError("tenacity's loop was built for a call whose first attempt answered")

    monkeypatch.setattr(retry, "_prepared", no_loop)
    clock = FakeClock()
    assert call_until_deadline(Failing(), clock.now + 30, clock=clock, sleep=clock.sleep) == ("ok", 1)


def test_a_first_fault_is_the_loops_first_attempt_waits_and_retries_included() -> None:
    """The loop takes over after a transient first fault: its wait, its on_retry and its counts are as if it
    had made the first attempt itself (a Retry-After honoured, two attempts, one retry told)."""
    clock = FakeClock()
    told: list[tuple[str, float]] = []
    upstream = Failing(ThrottledError(2.0))
    result = call_until_deadline(
        upstream,
        clock.now + 30,
        clock=clock,
        sleep=clock.sleep,
        on_retry=lambda error, wait: told.append((type(error).__name__, wait)),
    )
    assert result == ("ok", 2)
    assert clock.sleeps == [2.0]
    assert told == [("ThrottledError", 2.0)]
    assert len(upstream.timeouts) == 2  # the fault was not sent again: one call, then the retry


def test_step1_spends_few_of_the_accounts_calls_on_an_oktopost_that_keeps_failing() -> None:
    """The shim's Step 1 has 8 s (a caller waits on it); its backoff keeps a failing Oktopost from taking a
    quarter of the account's minute for one start, while still trying several times."""
    from api_shim.routes.authorizations import STEP1_POLICY, STEP1_SECONDS

    made: list[int] = []
    for seed in range(100):
        random.seed(seed)  # tenacity's jitter
        clock = FakeClock()
        upstream = Failing(*[ServerError(503)] * 100, clock=clock, cost=0.01)
        with pytest.raises(DeadlineReached):
            call_until_deadline(
                upstream, clock.now + STEP1_SECONDS, policy=STEP1_POLICY, clock=clock, sleep=clock.sleep
            )
        made.append(len(upstream.timeouts))
    assert min(made) >= 6
    assert max(made) <= 15
    assert sum(made) / len(made) <= 11
