"""The budget's window on a real Redis: its key lives as long as any call in it still counts, whatever
the hold of the call granted last, so a quiet gap never makes the budget forget a call (Lua TTLs)."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import RedisServer
from worker.keys import RedisNames
from worker.upstream.budget import NoBudgetInTime, UpstreamBudget

pytestmark = pytest.mark.integration


def test_a_short_hold_granted_last_does_not_make_the_window_forget_a_long_call(
    redis_server: RedisServer,
) -> None:
    names = RedisNames(f"ttl{uuid.uuid4().hex[:8]}").account("acct")
    budget = UpstreamBudget(redis_server.client(), names, limit=2, period=1.0)
    soon = time.time() + 30
    long_call = budget.acquire(priority=soon, give_up_at=soon, hold=8.0)  # a worker's call, in flight
    short_call = budget.acquire(priority=soon, give_up_at=soon, hold=0.1)  # a Step 1, over at once
    budget.finished(short_call)
    time.sleep(2.6)  # a quiet gap longer than period + the short hold + 1 s; the long call still counts
    budget.acquire(priority=soon, give_up_at=soon, hold=0.1)  # the one free slot
    with pytest.raises(NoBudgetInTime):  # not a second one: the long call holds it
        budget.acquire(priority=soon, give_up_at=time.time() + 0.5, hold=0.1)
    budget.finished(long_call)  # its end is recorded, not lost with the key
    assert budget.redis.zscore(names.budget_window, long_call.waiter) is not None
