"""Clocks for tests of deadlines: a clock that moves only when told (FakeClock), and Redis's time as a
process `shift` seconds off would take it to be (ShiftedClock).

A store whose clock is behind creates flows whose deadlines Redis (TIME, on this machine's clock)
already sees as passed, without waiting.
"""

from __future__ import annotations

import time

from worker.flows.store import FlowStore


class FakeClock:
    """Seconds that pass only when a test adds to `now` or something calls `sleep`, which records each."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ShiftedClock:
    def __init__(self, shift: float) -> None:
        self.shift = shift

    def now(self) -> float:
        return time.time() + self.shift

    def read_time(self) -> float:
        return self.now()


def seen_from(store: FlowStore, shift: float) -> FlowStore:
    """The same store, used by a process whose idea of Redis's time is `shift` seconds off."""
    return FlowStore(store.redis, store.names, store.lifetimes, clock=ShiftedClock(shift))
