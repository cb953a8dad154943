"""Redis's clock, the one clock of a deployment: every deadline, lease and expiry is a moment on it.

Processes on several machines disagree about the time by seconds; Redis is the one thing they share.
Lua scripts read TIME themselves. A process reads TIME once, notes where its own monotonic clock stood
(at the middle of the round trip), and from then on tells Redis's time by the monotonic time elapsed:
neither a skewed wall clock nor one that jumps (an NTP step, a VM resumed) moves it. It reads TIME
again every `refresh` seconds, which also bounds the drift between the two clocks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def read_time(self) -> float: ...


class RedisClock:
    def __init__(
        self, client: Any, refresh: float = 30.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.redis = client
        self.refresh = refresh
        self.monotonic = monotonic
        self._lock = threading.Lock()
        # (monotonic time of the last TIME read, Redis's time then): one tuple, replaced whole
        self._anchor: tuple[float, float] | None = None

    def now(self) -> float:
        """Epoch seconds on Redis's clock."""
        anchor = self._anchor
        if anchor is None or self.monotonic() - anchor[0] > self.refresh:
            with self._lock:
                anchor = self._anchor
                if anchor is None or self.monotonic() - anchor[0] > self.refresh:
                    self.read_time()
                    anchor = self._anchor
        assert anchor is not None
        read_at, redis_at = anchor
        return redis_at + (self.monotonic() - read_at)

    def read_time(self) -> float:
        """Asks Redis now (one round trip) and returns its time."""
        before = self.monotonic()
        seconds, microseconds = self.redis.time()
        after = self.monotonic()
        redis_at = int(seconds) + int(microseconds) / 1_000_000
        self._anchor = ((before + after) / 2, redis_at)
        return redis_at + (after - before) / 2
