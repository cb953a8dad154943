"""Counters of what the sandbox answered on `/v2/`, for tests and benchmarks (`GET /_sandbox/stats`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sandbox.faults import FAULT_KINDS


@dataclass(slots=True)
class Stats:
    """Counts since start-up or the last reset."""

    v2_calls: int = 0
    throttled_by_rate_limit: int = 0  # 429s from the burst limit, blocked calls included
    throttled_by_fault: int = 0  # 429s injected by throttle_rate
    blocked_count: int = 0  # how many times the account was blocked
    faults: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)

    def reset(self) -> None:
        self.v2_calls = self.throttled_by_rate_limit = self.throttled_by_fault = self.blocked_count = 0
        self.faults.clear()
        self.statuses.clear()

    def as_json(self) -> dict[str, object]:
        return {
            "v2_calls": self.v2_calls,
            "responses_429": {
                "total": self.throttled_by_rate_limit + self.throttled_by_fault,
                "rate_limit": self.throttled_by_rate_limit,
                "injected": self.throttled_by_fault,
            },
            "blocked_count": self.blocked_count,
            "ever_blocked": self.blocked_count > 0,
            "faults": {kind: self.faults[kind] for kind in FAULT_KINDS},
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
        }
