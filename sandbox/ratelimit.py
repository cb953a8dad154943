"""Oktopost's limits on an account: the burst window with the long block for whoever exceeds it, and the
daily cap that lasts until midnight UTC."""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

_UNIT_SECONDS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}
_DAY_S = 86400
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `calls` calls in any window of `window_s` seconds."""

    calls: int
    window_s: float

    def __str__(self) -> str:
        return f"{self.calls}/{self.window_s:g}s"


def parse_rate(text: str) -> Rate:
    """`60/minute`, `10/second`, `100/5minutes`, `20000/day` -> Rate; ValueError otherwise."""
    match = _RATE.match(text.lower())
    if match is None or match.group(3) not in _UNIT_SECONDS:
        raise ValueError(f"expected a rate like 60/minute or 10/second, got {text!r}")
    calls, multiplier = int(match.group(1)), int(match.group(2) or 1)
    if calls < 1 or multiplier < 1:
        raise ValueError(f"a rate needs at least one call in a window longer than zero, got {text!r}")
    return Rate(calls, float(multiplier * _UNIT_SECONDS[match.group(3)]))


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a call may go on; when not, how many whole seconds until the account may call again."""

    allowed: bool
    retry_after_s: int = 0
    blocked_now: bool = False  # this very call started a block


class SlidingWindowLimiter:
    """At most `rate.calls` accepted calls in any `rate.window_s`; the call past it blocks the account.

    During a block every call is refused. Refused calls do not count in the window.
    """

    def __init__(self, rate: Rate, block_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._block_s = block_s
        self._clock = clock
        self._accepted: deque[float] = deque()
        self._blocked_until = 0.0

    def reset(self) -> None:
        self._accepted.clear()
        self._blocked_until = 0.0

    def blocked(self) -> bool:
        """Whether a block is in force now."""
        return self._clock() < self._blocked_until

    def check(self) -> Verdict:
        now = self._clock()
        if now < self._blocked_until:
            return Verdict(False, _whole_seconds(self._blocked_until - now))
        horizon = now - self._rate.window_s
        while self._accepted and self._accepted[0] <= horizon:
            self._accepted.popleft()
        if len(self._accepted) < self._rate.calls:
            self._accepted.append(now)
            return Verdict(True)
        if self._block_s > 0:
            self._blocked_until = now + self._block_s
            return Verdict(False, _whole_seconds(self._block_s), blocked_now=True)
        # No block configured: only wait for the oldest call to leave the window.
        return Verdict(False, _whole_seconds(self._accepted[0] + self._rate.window_s - now))


class DailyLimit:
    """At most `calls` accepted calls in a UTC day; past them, every call waits for midnight UTC.

    Refused calls do not count, so `check` only looks and `count` records a call that went through.
    """

    def __init__(self, calls: int, wall_clock: Callable[[], float] = time.time) -> None:
        self._calls = calls
        self._wall_clock = wall_clock
        self._day = -1
        self._used = 0

    def reset(self) -> None:
        self._day = -1
        self._used = 0

    def check(self) -> Verdict:
        now = self._wall_clock()
        if self._used_on(now) < self._calls:
            return Verdict(True)
        return Verdict(False, _whole_seconds(seconds_to_midnight_utc(now)))

    def count(self) -> None:
        now = self._wall_clock()
        self._used = self._used_on(now) + 1
        self._day = _utc_day(now)

    def _used_on(self, now: float) -> int:
        return self._used if _utc_day(now) == self._day else 0


def seconds_to_midnight_utc(now: float) -> float:
    return (_utc_day(now) + 1) * _DAY_S - now


def _utc_day(now: float) -> int:
    # Unix time has no leap seconds, so every UTC day is exactly 86400 of its seconds.
    return int(now // _DAY_S)


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))
