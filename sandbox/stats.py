"""Counters of what the sandbox answered on `/v2/`, for tests and benchmarks (`GET /_sandbox/stats`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sandbox.faults import FAULT_KINDS


@dataclass(slots=True)
class Answered:
    """Requests answered (a hung or dropped call is not) and, of those, 429s."""

    calls: int = 0
    throttled: int = 0


class Stats:
    """Counts since start-up or the last reset, in total and per account."""

    def __init__(self, account_ids: Sequence[str]) -> None:
        self._account_ids = tuple(account_ids)
        self.reset()

    def reset(self) -> None:
        self.v2_calls = 0  # every request received, answered or not
        self.throttled_by_rate_limit = 0  # 429s from the burst limit, blocked calls included
        self.throttled_by_daily_limit = 0
        self.throttled_by_fault = 0  # 429s injected by throttle_rate
        self.blocked_count = 0  # how many times an account was blocked
        self.faults: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.total = Answered()  # a 401 counts here, in no account
        self.accounts = {account_id: Answered() for account_id in self._account_ids}

    def answered(self, account_id: str | None, status: int) -> None:
        self.statuses[status] += 1
        for counts in (self.total, self.accounts.get(account_id or "")):
            if counts is not None:
                counts.calls += 1
                counts.throttled += status == 429

    def as_json(self, blocked: Mapping[str, bool]) -> dict[str, object]:
        """`blocked`: whether each account's burst-limit block is in force now."""
        throttled = self.throttled_by_rate_limit + self.throttled_by_daily_limit + self.throttled_by_fault
        return {
            "calls": self.total.calls,
            "throttled": self.total.throttled,
            "blocked": any(blocked.values()),
            "accounts": {
                account_id: {
                    "calls": counts.calls,
                    "throttled": counts.throttled,
                    "blocked": blocked.get(account_id, False),
                }
                for account_id, counts in self.accounts.items()
            },
            "v2_calls": self.v2_calls,
            "responses_429": {
                "total": throttled,
                "rate_limit": self.throttled_by_rate_limit,
                "daily_limit": self.throttled_by_daily_limit,
                "injected": self.throttled_by_fault,
            },
            "blocked_count": self.blocked_count,
            "ever_blocked": self.blocked_count > 0,
            "faults": {kind: self.faults[kind] for kind in FAULT_KINDS},
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
        }
