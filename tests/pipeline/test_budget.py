"""The shared upstream budget: never more than the limit in any window, earliest deadline first."""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest

from worker.keys import RedisNames
from worker.upstream.budget import STEP1_PRIORITY, NoBudgetInTime, UpstreamBudget

# windows and waits of tenths of a second, timed
pytestmark = pytest.mark.alone


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def test_grants_up_to_the_limit_then_waits_a_window(client: fakeredis.FakeRedis) -> None:
    budget = UpstreamBudget(client, RedisNames("b").account("acct"), limit=3, period=0.5)
    started = time.monotonic()
    ends = []
    for _ in range(6):
        with budget.call(priority=time.time() + 10, give_up_at=time.time() + 10, hold=1):
            ends.append(time.monotonic() - started)
    assert all(e < 0.1 for e in ends[:3])
    assert all(e >= 0.5 for e in ends[3:])


def test_never_more_than_the_limit_in_any_window_across_threads(client: fakeredis.FakeRedis) -> None:
    budget = UpstreamBudget(client, RedisNames("b").account("acct"), limit=5, period=0.4)
    starts: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(3):
            with budget.call(priority=time.time() + 10, give_up_at=time.time() + 10, hold=1):
                with lock:
                    starts.append(time.monotonic())
                time.sleep(0.01)

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    starts.sort()
    assert len(starts) == 18
    for i, start in enumerate(starts):
        in_window = [s for s in starts[i:] if s - start < 0.4]
        assert len(in_window) <= 5


def test_earliest_deadline_goes_first_and_step1_last(client: fakeredis.FakeRedis) -> None:
    budget = UpstreamBudget(client, RedisNames("b").account("acct"), limit=1, period=0.3)
    order: list[str] = []
    now = time.time()
    with budget.call(priority=now, give_up_at=now + 10, hold=1):
        # the slot is taken: three callers queue up while it is
        waiters = {
            "step1": STEP1_PRIORITY,
            "late": now + 50,
            "soon": now + 20,
        }
        threads = []
        for name, priority in waiters.items():

            def wait(name: str = name, priority: float = priority) -> None:
                with budget.call(priority=priority, give_up_at=now + 30, hold=1):
                    order.append(name)

            thread = threading.Thread(target=wait)
            thread.start()
            threads.append(thread)
            time.sleep(0.05)  # all three are queued before the slot frees
    for thread in threads:
        thread.join()
    assert order == ["soon", "late", "step1"]


def test_a_caller_that_cannot_be_served_in_time_gives_up_at_once(client: fakeredis.FakeRedis) -> None:
    budget = UpstreamBudget(client, RedisNames("b").account("acct"), limit=1, period=5)
    with budget.call(priority=time.time(), give_up_at=time.time() + 10, hold=1):
        started = time.monotonic()
        with pytest.raises(NoBudgetInTime) as raised:
            budget.acquire(priority=time.time() + 1, give_up_at=time.time() + 1, hold=1)
        assert time.monotonic() - started < 0.2
        assert raised.value.wait > 1
    assert budget.backlog() == 0


def test_dead_waiters_drop_out_of_the_queue(client: fakeredis.FakeRedis) -> None:
    names = RedisNames("b").account("acct")
    budget = UpstreamBudget(client, names, limit=1, period=0.2)
    # a waiter from a process that died: queued first, never polls again
    client.zadd(names.budget_queue, {"ghost": 0})
    client.zadd(names.budget_alive, {"ghost": time.time() - 10})
    grant = budget.acquire(priority=time.time() + 5, give_up_at=time.time() + 5, hold=1)
    assert grant.waited < 0.1
    assert client.zscore(names.budget_queue, "ghost") is None


def test_a_call_in_flight_dooms_no_one_that_could_follow_it_in_time(client: fakeredis.FakeRedis) -> None:
    """An in-flight call is scored by the latest moment it may end (its hold); it may end any moment,
    so a waiter is kept (not doomed) while one period from now still fits before it gives up."""
    budget = UpstreamBudget(client, RedisNames("b").account("acct"), limit=1, period=0.5)
    granted = budget.acquire(priority=time.time(), give_up_at=time.time() + 10, hold=30)

    def end_the_call() -> None:
        time.sleep(0.1)
        budget.finished(granted)

    ender = threading.Thread(target=end_the_call)
    ender.start()
    started = time.monotonic()
    budget.acquire(priority=time.time() + 2, give_up_at=time.time() + 1.5, hold=1)  # not doomed
    ender.join()
    assert 0.5 <= time.monotonic() - started < 1.2  # a period after the call ended


def test_a_waiter_far_back_in_the_queue_knows_at_once_that_it_is_doomed(client: fakeredis.FakeRedis) -> None:
    names = RedisNames("b").account("acct")
    budget = UpstreamBudget(client, names, limit=2, period=1.0)
    now = time.time()
    for _ in range(2):  # the window is full
        budget.acquire(priority=now, give_up_at=now + 10, hold=1)
    for index in range(4):  # four live waiters ahead, all with earlier deadlines
        client.zadd(names.budget_queue, {f"ahead-{index}": now + index})
        client.zadd(names.budget_alive, {f"ahead-{index}": now})
    started = time.monotonic()
    with pytest.raises(NoBudgetInTime) as raised:  # two periods at least: past its 1.5 s
        budget.acquire(priority=now + 10, give_up_at=time.time() + 1.5, hold=1)
    assert time.monotonic() - started < 0.2
    assert raised.value.wait >= 2.0
