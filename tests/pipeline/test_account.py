"""The Oktopost account as a whole (fakeredis): the pause after a 429 and the day's count, as the budget's
script, the flow transitions and the sweeper honour them."""

from __future__ import annotations

import time

import fakeredis
import httpx
import pytest

from tests.pipeline.test_parking import unparker_for
from tests.pipeline.test_work import PROFILE, Answers, claimed, make_context
from tests.shim.harness import RecordingEnqueuer
from worker.config.tenants import DEFAULT_ACCOUNT_ID
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.oktopost.errors import ThrottledError
from worker.tasks.sweeper import sweep_once
from worker.tasks.work import TaskOutcome, verify_flow
from worker.upstream.account import admission_member, seconds_to_midnight
from worker.upstream.budget import AccountPaused, DailyLimitSpent, UpstreamBudget

# pauses and refusals timed to tenths of a second
pytestmark = pytest.mark.alone

TOKEN = "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def budget_on(client: fakeredis.FakeRedis, **account: float) -> UpstreamBudget:
    names = RedisNames("a").account(DEFAULT_ACCOUNT_ID)  # the account of the flows store_on makes
    return UpstreamBudget(client, names, limit=100, period=1.0, **account)  # type: ignore[arg-type]


def store_on(client: fakeredis.FakeRedis) -> FlowStore:
    return FlowStore(client, RedisNames("a"), Lifetimes(flow_ttl=900, token_ttl=300))


# --- the pause ---------------------------------------------------------------------------------------------


def test_no_call_is_granted_until_the_pause_ends(client: fakeredis.FakeRedis) -> None:
    budget = budget_on(client)
    budget.account.pause(retry_after=0.6)
    started = time.monotonic()
    budget.acquire(priority=time.time() + 30, give_up_at=time.time() + 30, hold=1)
    assert time.monotonic() - started >= 0.55


def test_a_caller_whose_give_up_time_comes_before_the_pause_end_is_refused_at_once(
    client: fakeredis.FakeRedis,
) -> None:
    budget = budget_on(client)
    budget.account.pause(retry_after=120)
    started = time.monotonic()
    with pytest.raises(AccountPaused) as refused:
        budget.acquire(priority=time.time() + 60, give_up_at=time.time() + 60, hold=1)
    assert time.monotonic() - started < 0.5
    assert 115 < refused.value.wait <= 120


def test_a_429_in_a_call_pauses_the_account_for_every_process(client: fakeredis.FakeRedis) -> None:
    one, other = budget_on(client), budget_on(client)
    with (
        pytest.raises(ThrottledError),
        one.call(priority=time.time() + 60, give_up_at=time.time() + 60, hold=1),
    ):
        raise ThrottledError(retry_after=30)
    with pytest.raises(AccountPaused):
        other.acquire(priority=time.time() + 10, give_up_at=time.time() + 10, hold=1)
    paused_until = other.account.standing().paused_until
    assert paused_until is not None
    assert 25 < paused_until - time.time() <= 30


def test_a_429_without_retry_after_pauses_for_the_block_seconds(client: fakeredis.FakeRedis) -> None:
    budget = budget_on(client, block_seconds=45)
    ends = budget.account.pause(retry_after=None)
    assert 40 < ends - time.time() <= 45


def test_two_pauses_at_once_keep_the_later_end_and_count_as_one(client: fakeredis.FakeRedis) -> None:
    budget = budget_on(client)
    later = budget.account.pause(retry_after=60)
    assert budget.account.pause(retry_after=5) == later
    assert budget.account.pauses_entered() == 1


def test_the_pause_resumes_by_itself_and_one_process_reports_its_end(client: fakeredis.FakeRedis) -> None:
    one, other = budget_on(client), budget_on(client)
    one.account.pause(retry_after=0.2)
    time.sleep(0.25)
    assert one.account.standing().paused_until is None
    one.acquire(priority=time.time() + 5, give_up_at=time.time() + 5, hold=1)  # calls go on
    assert [one.account.resume_if_over(), other.account.resume_if_over()] == [True, False]


# --- the day's count ---------------------------------------------------------------------------------------


def test_no_call_is_granted_past_the_daily_limit_until_midnight_utc(client: fakeredis.FakeRedis) -> None:
    budget = budget_on(client, daily_limit=3)
    for _ in range(3):
        budget.acquire(priority=time.time() + 5, give_up_at=time.time() + 5, hold=1)
    with pytest.raises(DailyLimitSpent) as spent:
        budget.acquire(priority=time.time() + 5, give_up_at=time.time() + 5, hold=1)
    assert abs(spent.value.wait - seconds_to_midnight(time.time())) < 2
    assert budget.account.standing().remaining_today == 0


def test_a_new_flow_is_admitted_only_while_the_day_covers_the_flows_under_way(
    client: fakeredis.FakeRedis,
) -> None:
    budget, store = budget_on(client, daily_limit=5), store_on(client)

    def start(flow_id: str, entity_type: str) -> None:
        member = admission_member(flow_id, entity_type)
        budget.acquire(priority=1e12, give_up_at=time.time() + 2, hold=1, admission=member)  # Step 1
        store.create(flow_id, "LinkedIn", entity_type, None, None)
        budget.account.release_admission(member)

    start("flow-1", "page")  # Step 1 made, verify and the PUT still to come
    assert budget.account.standing().reserved == 2
    with pytest.raises(DailyLimitSpent) as refused:  # 4 left, 2 of them spoken for: a page needs 3
        start("flow-2", "page")
    assert refused.value.wait > 0
    start("flow-3", "profile")  # a profile's 2 fit
    standing = budget.account.standing()
    assert (standing.used_today, standing.reserved) == (2, 3)
    assert store.get("flow-2") is None


def test_a_flow_gives_back_what_it_no_longer_needs_as_it_moves_on(client: fakeredis.FakeRedis) -> None:
    budget, store = budget_on(client, daily_limit=100), store_on(client)
    flow = store.create("flow-1", "Facebook", "page", None, None)
    assert budget.account.standing().reserved == 2
    assert store.claim_callback(flow, TOKEN).done
    store.take_work("flow-1", "task", FlowState.VERIFYING)
    verifying = store.get("flow-1")
    assert verifying is not None
    assert store.offer_selection(verifying, [], "task").done
    assert budget.account.standing().reserved == 1  # the PUT
    waiting = store.get("flow-1")
    assert waiting is not None
    assert store.expire_blocked(waiting).done
    assert budget.account.standing().reserved == 0


def test_a_step1_that_never_creates_its_flow_gives_its_calls_back(client: fakeredis.FakeRedis) -> None:
    budget = budget_on(client, daily_limit=100)
    member = admission_member("flow-1", "page")
    budget.acquire(priority=1e12, give_up_at=time.time() + 2, hold=1, admission=member)
    assert budget.account.standing().reserved == 2
    budget.account.release_admission(member)  # the shim refused the flow (Step 1 failed)
    budget.account.release_admission(member)  # and a second release changes nothing
    assert budget.account.standing().reserved == 0


# --- the sweeper -------------------------------------------------------------------------------------------


def test_the_sweeper_ends_at_once_the_flows_that_cannot_outlive_the_pause(
    client: fakeredis.FakeRedis,
) -> None:
    budget, store = budget_on(client), store_on(client)
    verifying = store.create("verifying", "LinkedIn", "profile", None, None)
    assert store.claim_callback(verifying, TOKEN).done  # its token lives 300 s
    store.create("awaiting-callback", "LinkedIn", "profile", None, None)  # may be called back later
    budget.account.pause(retry_after=600)
    assert sweep_once(store, RecordingEnqueuer(), [budget.account]) == (1, 0)
    ended = store.events("verifying")[-1]
    assert ended["type"] == "authorization.expired"
    assert ended["data"] == {"stage": "verify", "reason": "upstream_blocked"}
    waiting = store.get("awaiting-callback")
    assert waiting is not None
    assert waiting.state is FlowState.AWAITING_CALLBACK


def test_the_sweeper_leaves_flows_that_outlive_the_pause(client: fakeredis.FakeRedis) -> None:
    budget, store = budget_on(client), store_on(client)
    flow = store.create("verifying", "LinkedIn", "profile", None, None)
    assert store.claim_callback(flow, TOKEN).done
    budget.account.pause(retry_after=60)
    assert sweep_once(store, RecordingEnqueuer(), [budget.account]) == (0, 0)
    still = store.get("verifying")
    assert still is not None
    assert still.state is FlowState.VERIFYING


# --- a task meets a 429 ------------------------------------------------------------------------------------


def test_a_flow_whose_token_outlives_the_pause_completes_after_it_without_calling_meanwhile() -> None:
    handler = Answers(httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(200, json=PROFILE))
    context = make_context(handler, token_ttl=30)
    enqueuer = RecordingEnqueuer()
    unparker = unparker_for(context, enqueuer)
    started = time.monotonic()
    flow_id = claimed(context)
    assert verify_flow(context, flow_id) is TaskOutcome.PARKED  # it waits out the pause in Redis
    assert unparker.release_due()[0] == 0  # not while the account is paused
    while not enqueuer.enqueued:
        unparker.release_due()
        time.sleep(0.01)
    assert time.monotonic() - started >= 0.9
    assert enqueuer.enqueued == [(flow_id, FlowState.VERIFYING)]
    assert verify_flow(context, flow_id) is TaskOutcome.COMPLETED
    assert len(handler.seen) == 2


def test_a_flow_whose_token_ends_before_the_pause_expires_as_blocked_at_once() -> None:
    handler = Answers(httpx.Response(429, headers={"Retry-After": "120"}), httpx.Response(200, json=PROFILE))
    context = make_context(handler, token_ttl=30)
    started = time.monotonic()
    assert verify_flow(context, claimed(context)) is TaskOutcome.EXPIRED
    assert time.monotonic() - started < 1
    assert len(handler.seen) == 1
    ended = context.store.events("flow-1")[-1]
    assert ended["type"] == "authorization.expired"
    assert ended["data"] == {"stage": "verify", "reason": "upstream_blocked"}


def test_flows_abandoned_before_their_callback_do_not_hide_the_paused_account_s_live_flows(
    client: fakeredis.FakeRedis,
) -> None:
    budget = budget_on(client)
    store = FlowStore(client, RedisNames("a"), Lifetimes(flow_ttl=60, token_ttl=300))
    for number in range(300):  # abandoned before their callback: their deadlines come first
        store.create(f"abandoned-{number}", "LinkedIn", "profile", None, None)
    live = store.create("verifying", "LinkedIn", "profile", None, None)
    assert store.claim_callback(live, TOKEN).done  # its deadline: 300 s, after all of theirs
    budget.account.pause(retry_after=600)
    assert sweep_once(store, RecordingEnqueuer(), [budget.account])[0] == 1
    ended = store.events("verifying")[-1]
    assert ended["data"] == {"stage": "verify", "reason": "upstream_blocked"}
    waiting = store.get("abandoned-0")
    assert waiting is not None
    assert waiting.state is FlowState.AWAITING_CALLBACK
