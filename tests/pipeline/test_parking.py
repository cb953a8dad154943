"""Parking (fakeredis): a flow that must wait for its account's budget waits in Redis, not in a thread, and
is released earliest deadline first with a slot reserved in its name; never lost, never doubled."""

from __future__ import annotations

import time

import fakeredis
import httpx
import pytest

from tests.support.shim import RecordingEnqueuer
from tests.support.work import PROFILE, TOKEN, Answers, budget_of, unparker_for
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.observing.metrics import WorkerMetrics
from worker.oktopost import OktopostClient
from worker.tasks.leases import LeaseKeeper
from worker.tasks.sweeper import sweep_once
from worker.tasks.work import TaskContext, TaskOutcome, verify_flow
from worker.upstream.budget import NoBudgetNow, UpstreamBudget
from worker.upstream.clients import Upstreams
from worker.upstream.parking import (
    RAMP_PROBE_SECONDS,
    RAMP_WINDOW,
    STRANDED_MARGIN_SECONDS,
    STRANDED_SECONDS,
    Unparker,
)
from worker.upstream.retry import RetryPolicy

pytestmark = pytest.mark.alone  # budgets of a few tenths of a second: a busy machine would blur them

FAST = RetryPolicy(max_attempt_seconds=1, min_attempt_seconds=0.1, backoff_multiplier=0.001, backoff_max=0.01)


def limited_context(limit: int, period: float, token_ttl: int = 30) -> tuple[TaskContext, Answers]:
    handler = Answers(httpx.Response(200, json=PROFILE))
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    names = RedisNames("p")
    store = FlowStore(client, names, Lifetimes(flow_ttl=60, token_ttl=token_ttl, lease=5))
    upstream = OktopostClient("https://api.test", "acct", "key", transport=httpx.MockTransport(handler))
    budget = UpstreamBudget(client, names.account(store.default_account), limit, period)
    metrics = WorkerMetrics(client, "p:metrics")
    return TaskContext(store, Upstreams.single(upstream, budget), FAST, metrics, LeaseKeeper(store)), handler


def claim(context: TaskContext, count: int) -> list[str]:
    """Flows called back one after the other: each one's deadline is later than the one before."""
    flow_ids = []
    for i in range(count):
        flow = context.store.create(f"flow-{i}", "LinkedIn", "profile", None, None)
        assert context.store.claim_callback(flow, f"{TOKEN}{i}").done
        flow_ids.append(flow.flow_id)
        time.sleep(0.002)
    return flow_ids


def parked(context: TaskContext) -> list[str]:
    return [m.decode() for m in context.store.redis.zrange(budget_of(context).names.parked_flows, 0, -1)]


def test_a_flow_without_budget_parks_at_once_and_is_released_in_deadline_order_with_its_slot() -> None:
    context, handler = limited_context(limit=2, period=0.3)
    store, names = context.store, context.store.names
    enqueuer = RecordingEnqueuer()
    unparker = unparker_for(context, enqueuer)
    flow_ids = claim(context, 6)
    started = time.monotonic()
    outcomes = [verify_flow(context, flow_id) for flow_id in reversed(flow_ids)]  # latest deadline first
    assert time.monotonic() - started < 0.5  # no task waited for the budget in its thread
    assert outcomes == [TaskOutcome.COMPLETED] * 2 + [TaskOutcome.PARKED] * 4
    assert parked(context) == flow_ids[:4]  # by deadline, whatever order they came in
    for flow_id in flow_ids[:4]:
        flow = store.get(flow_id)
        assert flow is not None
        assert flow.state is FlowState.VERIFYING
        assert store.redis.zscore(names.leases, flow_id) is None  # no lease for the sweeper to requeue
        assert store.redis.hget(names.flow_state(flow_id), "owner") == b""
    assert (
        store.redis.zcard(budget_of(context).names.budget_queue) == 0
    )  # the parked tasks left the budget's queue
    assert sweep_once(store, enqueuer) == (0, 0)
    assert unparker.release_due()[0] == 0  # the window is full
    assert enqueuer.enqueued == []

    released: list[str] = []
    calls: list[float] = []
    calls_before = len(handler.seen)
    while len(released) < 4:
        unparker.release_due()
        window, early = budget_of(context).names.budget_window, budget_of(context).names.early_slots
        # reserved slots count against the limit (one reserved before it frees stands for the call it
        # replaces, which is still in the window until then)
        assert store.redis.zcard(window) - store.redis.zcard(early) <= 2
        for flow_id, state in enqueuer.enqueued[len(released) :]:
            assert state is FlowState.VERIFYING
            assert store.redis.zscore(names.leases, flow_id) is not None  # its queued task has a lease
            released.append(flow_id)
            waited = time.monotonic()  # its task uses the slot it was released with, once it frees
            assert verify_flow(context, flow_id) is TaskOutcome.COMPLETED
            assert time.monotonic() - waited < 0.2
            calls.append(time.monotonic())
        time.sleep(0.005)
    assert released == flow_ids[:4]  # earliest deadline first
    for index, call in enumerate(calls[2:], start=2):  # never more than 2 calls in any 0.3 s
        assert call - calls[index - 2] >= 0.3 - 0.01, calls
    assert time.monotonic() - started >= 0.6  # two more windows
    assert len(handler.seen) - calls_before == 4
    for flow_id in flow_ids:
        types = [e["type"] for e in store.events(flow_id)]
        assert types.count("connection.completed") == 1, types
    assert store.redis.zcard(names.parked_accounts) == 0


def test_a_parked_flow_past_its_deadline_expires_once_and_is_never_released() -> None:
    context, _ = limited_context(limit=1, period=0.8, token_ttl=1)
    store = context.store
    enqueuer = RecordingEnqueuer()
    unparker = unparker_for(context, enqueuer)
    first, second = claim(context, 2)
    assert verify_flow(context, first) is TaskOutcome.COMPLETED
    assert verify_flow(context, second) is TaskOutcome.PARKED
    time.sleep(1.1)  # its slot came at 0.8 s, but no unparker ran before its deadline
    assert sweep_once(store, enqueuer) == (1, 0)
    assert sweep_once(store, enqueuer) == (0, 0)
    store.redis.delete(
        budget_of(context).names.budget_window
    )  # room again: the expired flow is dropped, not released
    unparker.release_due()
    assert enqueuer.enqueued == []
    assert parked(context) == []
    types = [e["type"] for e in store.events(second)]
    assert types.count("authorization.expired") == 1
    assert types[-1] == "authorization.expired"


def test_a_flow_taken_up_by_another_task_meanwhile_is_dropped_not_released_twice() -> None:
    context, _ = limited_context(limit=1, period=0.3)
    store, names = context.store, context.store.names
    enqueuer = RecordingEnqueuer()
    first, second, third = claim(context, 3)
    assert verify_flow(context, first) is TaskOutcome.COMPLETED
    assert verify_flow(context, second) is TaskOutcome.PARKED
    assert verify_flow(context, third) is TaskOutcome.PARKED
    # a redelivered task takes the second flow's work while it is parked
    assert store.take_work(second, "another-task", FlowState.VERIFYING).flow is not None
    time.sleep(0.35)
    one, two = unparker_for(context, enqueuer), unparker_for(context, enqueuer)
    one.release_due()
    two.release_due()  # a second worker's unparker finds nothing more to release
    assert enqueuer.enqueued == [(third, FlowState.VERIFYING)]
    assert parked(context) == []
    assert store.redis.hget(names.flow_state(second), "owner") == b"another-task"


def test_a_new_call_does_not_pass_parked_flows_with_an_earlier_deadline() -> None:
    context, _ = limited_context(limit=1, period=0.3)
    budget, store = budget_of(context), context.store
    first, second = claim(context, 2)
    assert verify_flow(context, first) is TaskOutcome.COMPLETED
    assert verify_flow(context, second) is TaskOutcome.PARKED
    time.sleep(0.35)  # the slot is free, but the parked flow comes first
    deadline = store.clock.now() + 30
    with pytest.raises(NoBudgetNow):  # it parks too, behind the earlier one
        budget.acquire(deadline, deadline, 1, park_after=0.05)


def test_a_short_wait_is_waited_out_in_the_thread() -> None:
    context, _ = limited_context(limit=1, period=0.03)
    first, second = claim(context, 2)
    assert verify_flow(context, first) is TaskOutcome.COMPLETED
    assert verify_flow(context, second) is TaskOutcome.COMPLETED  # under PARK_AFTER_SECONDS: no parking
    assert parked(context) == []


def test_a_flow_called_back_while_its_account_has_parked_flows_joins_them_without_a_task() -> None:
    context, _ = limited_context(limit=1, period=0.3)
    store, names = context.store, context.store.names
    enqueuer = RecordingEnqueuer()
    first, second = claim(context, 2)
    assert verify_flow(context, first) is TaskOutcome.COMPLETED
    assert verify_flow(context, second) is TaskOutcome.PARKED
    (third,) = claim_more(context, 1)  # called back while its account's budget has flows waiting
    assert parked(context) == [second, third]  # parked at its callback, behind the earlier deadline
    assert store.redis.zscore(names.leases, third) is None
    time.sleep(0.35)
    unparker = unparker_for(context, enqueuer)
    while len(enqueuer.enqueued) < 2:
        unparker.release_due()
        for flow_id, _ in enqueuer.enqueued:
            verify_flow(context, flow_id)
        time.sleep(0.01)
    assert [flow_id for flow_id, _ in enqueuer.enqueued] == [second, third]


def claim_more(context: TaskContext, count: int) -> list[str]:
    """More flows called back, after those of `claim`."""
    flow_ids = []
    for i in range(count):
        flow = context.store.create(f"later-{i}", "LinkedIn", "profile", None, None)
        assert context.store.claim_callback(flow, f"{TOKEN}later{i}").done
        flow_ids.append(flow.flow_id)
    return flow_ids


def daily_context(limit: int, period: float, daily_limit: int) -> TaskContext:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    names = RedisNames("p")
    store = FlowStore(client, names, Lifetimes(flow_ttl=60, token_ttl=30, lease=5))
    handler = Answers(httpx.Response(200, json=PROFILE))
    upstream = OktopostClient("https://api.test", "acct", "key", transport=httpx.MockTransport(handler))
    budget = UpstreamBudget(
        client, names.account(store.default_account), limit, period, daily_limit=daily_limit
    )
    metrics = WorkerMetrics(client, "p:metrics")
    return TaskContext(store, Upstreams.single(upstream, budget), FAST, metrics, LeaseKeeper(store))


def test_a_parked_flow_whose_day_is_spent_ends_at_once_as_blocked() -> None:
    context = daily_context(limit=1, period=0.3, daily_limit=4)
    store, budget = context.store, budget_of(context)
    first, second = claim(context, 2)
    assert verify_flow(context, first) is TaskOutcome.COMPLETED
    assert verify_flow(context, second) is TaskOutcome.PARKED
    day_key = budget.names.daily_calls(int(store.clock.now() // 86400))
    store.redis.set(day_key, 4)  # another process spent the day meanwhile
    time.sleep(0.3)  # the account is due: its slot frees, but the day is spent until after the deadline
    unparker_for(context, RecordingEnqueuer()).release_due()
    ended = store.events(second)[-1]
    assert ended["type"] == "authorization.expired"
    assert ended["data"] == {"stage": "verify", "reason": "upstream_blocked"}
    assert parked(context) == []


def test_a_parked_flow_no_slot_can_come_for_in_time_ends_at_once() -> None:
    context, _ = limited_context(limit=1, period=2.0, token_ttl=3)
    store, budget = context.store, budget_of(context)
    first, second = claim(context, 2)
    assert verify_flow(context, first) is TaskOutcome.COMPLETED
    assert verify_flow(context, second) is TaskOutcome.PARKED  # its slot: in 2 s; its deadline: 3 s
    time.sleep(2.0)
    # meanwhile a flow with an earlier deadline, waiting in its thread, took the slot: the next one
    # comes 2 s after that call ends, at the soonest, past the parked flow's deadline
    budget.acquire(priority=0, give_up_at=store.clock.now() + 10, hold=5)
    unparker_for(context, RecordingEnqueuer()).release_due()
    ended = store.events(second)[-1]
    assert ended["type"] == "authorization.expired"
    assert ended["data"] == {"stage": "verify"}  # the budget was busy: no reason, as in a thread
    assert parked(context) == []


def test_a_parked_flow_of_a_paused_account_ends_at_once_as_blocked() -> None:
    context, _ = limited_context(limit=1, period=0.3)
    store, budget = context.store, budget_of(context)
    first, second = claim(context, 2)
    assert verify_flow(context, first) is TaskOutcome.COMPLETED
    assert verify_flow(context, second) is TaskOutcome.PARKED
    budget.account.pause(retry_after=600)
    time.sleep(0.3)
    unparker_for(context, RecordingEnqueuer()).release_due()
    assert store.events(second)[-1]["data"] == {"stage": "verify", "reason": "upstream_blocked"}


def test_an_account_no_worker_knows_fails_its_parked_flows_and_is_forgotten() -> None:
    context, _ = limited_context(limit=1, period=0.3)
    store, names = context.store, context.store.names
    first, second, third = claim(context, 3)
    assert verify_flow(context, first) is TaskOutcome.COMPLETED
    assert verify_flow(context, second) is TaskOutcome.PARKED
    assert verify_flow(context, third) is TaskOutcome.PARKED
    parked_set = budget_of(context).names.parked_flows
    # the account left the configuration: no unparker knows it
    stranger = Unparker(store, RecordingEnqueuer(), lambda _: None, hold=2.0, least_seconds=0.1)
    stranger.release_due()  # not overdue yet: a worker that knows it may still release them
    assert parked(context) == [second, third]
    overdue = store.clock.now() - STRANDED_SECONDS - 1  # nobody moved it on
    store.redis.zadd(names.parked_accounts, {parked_set: overdue})
    near = store.clock.now() + STRANDED_MARGIN_SECONDS - 1  # and their deadlines come (their scores)
    store.redis.zadd(parked_set, {second: near, third: near})
    stranger.release_due()
    for flow_id in (second, third):
        ended = store.events(flow_id)[-1]
        assert ended["type"] == "authorization.failed"
        assert ended["data"]["code"] == "unauthorized"
    assert parked(context) == []
    assert store.redis.zcard(names.parked_accounts) == 0
    (later,) = claim_more(context, 1)  # a later callback of the account is queued, not parked
    assert parked(context) == []
    assert store.redis.zscore(names.leases, later) is not None


def _released_now(unparker: Unparker, enqueuer: RecordingEnqueuer) -> list[str]:
    before = len(enqueuer.enqueued)
    unparker.release_due()
    return [flow_id for flow_id, _ in enqueuer.enqueued[before:]]


def _wait_out_the_pause(budget: UpstreamBudget) -> None:
    while budget.account.standing().paused_until is not None:
        time.sleep(0.01)


def _first_release(unparker: Unparker, enqueuer: RecordingEnqueuer, within: float = 2.0) -> list[str]:
    """The first flows released after a pause: at the account's first look past the pause's end, which
    may come a few milliseconds after the pause's key is gone (on a loaded machine, more)."""
    ends = time.monotonic() + within
    while True:
        released = _released_now(unparker, enqueuer)
        if released or time.monotonic() > ends:
            return released
        time.sleep(0.01)


def test_after_a_pause_one_call_goes_first_then_a_window_so_a_new_429_meets_one_not_all() -> None:
    context, handler = limited_context(limit=100, period=1.0)
    budget = budget_of(context)
    enqueuer = RecordingEnqueuer()
    unparker = unparker_for(context, enqueuer)
    flow_ids = claim(context, 2 * RAMP_WINDOW + 2)
    budget.account.pause(0.4)
    assert [verify_flow(context, flow_id) for flow_id in flow_ids] == [TaskOutcome.PARKED] * len(flow_ids)
    while budget.account.standing().paused_until is not None:  # a paused account costs no task run
        unparker.release_due()
        time.sleep(0.02)
    assert enqueuer.enqueued == []

    probe = _first_release(unparker, enqueuer)  # at the account's first look past the pause's end
    assert probe == flow_ids[:1]  # one call first: the earliest deadline
    assert _released_now(unparker, enqueuer) == []  # the rest wait while it is in flight
    handler.queue = [httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(200, json=PROFILE)]
    assert verify_flow(context, probe[0]) is TaskOutcome.PARKED  # the new pause met that one flow only
    assert _released_now(unparker, enqueuer) == []
    _wait_out_the_pause(budget)

    at_once = []
    give_up = time.monotonic() + 10
    while len(enqueuer.enqueued) < 1 + len(flow_ids):  # the probe again, then a window as calls end
        assert time.monotonic() < give_up
        released = _released_now(unparker, enqueuer)
        outcomes = [verify_flow(context, flow_id) for flow_id in released]
        assert outcomes == [TaskOutcome.COMPLETED] * len(released)
        at_once.append(len(released))
        time.sleep(0 if released else 0.01)  # the account is due a moment after its pause's end
    assert max(at_once) == RAMP_WINDOW
    assert len(handler.seen) == 1 + len(flow_ids)  # one call each, and the one 429
    for flow_id in flow_ids:
        assert [e["type"] for e in context.store.events(flow_id)].count("connection.completed") == 1
    assert parked(context) == []


def test_a_call_that_ends_during_a_ramp_releases_the_next_flow_at_once() -> None:
    """The unparker does not wait for the account's next look: the task that ended a call wakes it."""
    context, _ = limited_context(limit=100, period=1.0)
    budget = budget_of(context)
    store, names = context.store, context.store.names
    enqueuer = RecordingEnqueuer()
    unparker = unparker_for(context, enqueuer)
    flow_ids = claim(context, RAMP_WINDOW + 1)
    budget.account.pause(0.2)
    assert [verify_flow(context, flow_id) for flow_id in flow_ids] == [TaskOutcome.PARKED] * len(flow_ids)
    _wait_out_the_pause(budget)
    probe = _first_release(unparker, enqueuer)
    assert probe == flow_ids[:1]
    assert verify_flow(context, probe[0]) is TaskOutcome.COMPLETED  # the window opens
    later = float(store.redis.time()[0]) + 60  # the account's next look, as if far off
    store.redis.zadd(names.parked_accounts, {budget.names.parked_flows: later})
    assert _released_now(unparker, enqueuer) == []
    unparker.call_ended()
    assert _released_now(unparker, enqueuer) == flow_ids[1:]


def test_a_first_call_that_hangs_after_a_pause_holds_the_window_for_the_probe_only() -> None:
    """A block still in force answers at once: a call that has not ended RAMP_PROBE_SECONDS after its grant
    met none, and hanging (until its timeout) it no longer holds the account's parked flows back."""
    context, _ = limited_context(limit=100, period=1.0)
    budget = budget_of(context)
    enqueuer = RecordingEnqueuer()
    unparker = unparker_for(context, enqueuer)  # its released slots are held 2 s
    flow_ids = claim(context, 3)
    budget.account.pause(0.2)
    assert [verify_flow(context, flow_id) for flow_id in flow_ids] == [TaskOutcome.PARKED] * 3
    _wait_out_the_pause(budget)
    assert _first_release(unparker, enqueuer) == flow_ids[:1]  # its task never ends its call
    assert _released_now(unparker, enqueuer) == []  # the probe: one call first
    time.sleep(RAMP_PROBE_SECONDS + 0.05)
    assert _released_now(unparker, enqueuer) == flow_ids[1:2]  # the window opens past the hanging one
    assert _released_now(unparker, enqueuer) == []  # and counts the one just released


def test_a_released_flow_that_meets_a_new_pause_gives_its_slot_back() -> None:
    context, _ = limited_context(limit=100, period=1.0)
    budget = budget_of(context)
    enqueuer = RecordingEnqueuer()
    unparker = unparker_for(context, enqueuer)
    flow_ids = claim(context, 2)
    budget.account.pause(0.2)
    assert [verify_flow(context, flow_id) for flow_id in flow_ids] == [TaskOutcome.PARKED] * 2
    _wait_out_the_pause(budget)
    _first_release(unparker, enqueuer)
    assert enqueuer.enqueued == [(flow_ids[0], FlowState.VERIFYING)]
    budget.account.pause(0.2)  # another client's 429, before the released task starts
    assert verify_flow(context, flow_ids[0]) is TaskOutcome.PARKED
    assert context.store.redis.zcard(budget.names.budget_window) == 0  # its unused slot given back
    _wait_out_the_pause(budget)
    give_up = time.monotonic() + 5
    while len(enqueuer.enqueued) < 2 and time.monotonic() < give_up:  # nothing in flight: one goes
        unparker.release_due()
        time.sleep(0.01)
    assert enqueuer.enqueued[1:] == [(flow_ids[0], FlowState.VERIFYING)]
