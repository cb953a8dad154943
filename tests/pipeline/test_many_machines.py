"""Correct on several machines: a task that lost its flow changes nothing, a live worker keeps its flow
however long a call takes, Redis's clock is the only one compared, and the sweeper's hand-over is one step.
On fakeredis, whose Lua reads TIME like Redis; each interleaving is driven step by step."""

from __future__ import annotations

import time
from collections.abc import Iterator

import fakeredis
import httpx
import pytest

from tests.support.clocks import seen_from
from tests.support.shim import RecordingEnqueuer
from worker.clock import RedisClock
from worker.events import EntityOffer
from worker.flows.enqueuer import QueuedTask
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore, RequeueOutcome, TakeOutcome
from worker.flows.transition import TransitionOutcome
from worker.keys import RedisNames
from worker.observing.metrics import WorkerMetrics
from worker.oktopost import OktopostClient
from worker.tasks.leases import LeaseKeeper
from worker.tasks.sweeper import Sweeper, sweep_once
from worker.tasks.work import TaskContext, TaskOutcome, verify_flow
from worker.upstream.budget import UpstreamBudget
from worker.upstream.clients import Upstreams
from worker.upstream.retry import RetryPolicy

TOKEN = "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"
PROFILE = {
    "Result": True,
    "Credential": {"Id": "003-1", "Name": "Jo", "Status": "valid", "Network": "LinkedIn"},
}
OFFERS = [EntityOffer(id=str(i), name=f"Page {i}", network="LinkedIn") for i in (1, 2)]


@pytest.fixture
def store() -> FlowStore:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return FlowStore(client, RedisNames("t"), Lifetimes(flow_ttl=60, token_ttl=60, lease=0.6))


def verifying(store: FlowStore, entity_type: str = "page") -> str:
    flow = store.create("flow-1", "LinkedIn", entity_type, None, None)
    assert store.claim_callback(flow, TOKEN).done
    return "flow-1"


def state(store: FlowStore) -> FlowState:
    flow = store.get("flow-1")
    assert flow is not None
    return flow.state


def test_a_task_that_lost_its_flow_cannot_end_it(store: FlowStore) -> None:
    """Task A's lease lapses mid-call; the sweeper hands the flow on; task B offers the selection and the
    user submits it; then A's call comes back refused: A's failure changes nothing."""
    flow_id = verifying(store)
    assert store.take_work(flow_id, "task-a", FlowState.VERIFYING).outcome is TakeOutcome.TAKEN
    seen_by_a = store.get(flow_id)
    assert seen_by_a is not None
    store.lapse_lease(flow_id)  # A is paused: no heartbeat
    queue = RecordingEnqueuer()
    assert sweep_once(store, queue) == (0, 1)
    assert queue.enqueued == [(flow_id, FlowState.VERIFYING)]
    assert store.take_work(flow_id, "task-b", FlowState.VERIFYING).outcome is TakeOutcome.TAKEN
    assert store.offer_selection(seen_by_a, OFFERS, "task-b").done
    waiting = store.get(flow_id)
    assert waiting is not None
    assert store.submit_selection(waiting, ["1"]).done

    refused = store.fail(seen_by_a, "token_invalid", "refused", 1, "task-a")
    assert refused.outcome is TransitionOutcome.FENCED
    assert state(store) is FlowState.COMPLETING
    # and while both are still verifying, the fence alone stops A
    other = seen_from(store, 0)
    other.redis.flushall()
    flow_id = verifying(other)
    other.take_work(flow_id, "task-a", FlowState.VERIFYING)
    other.lapse_lease(flow_id)
    sweep_once(other, RecordingEnqueuer())
    other.take_work(flow_id, "task-b", FlowState.VERIFYING)
    flow = other.get(flow_id)
    assert flow is not None
    assert other.fail(flow, "token_invalid", "refused", 1, "task-a").outcome is TransitionOutcome.FENCED
    assert other.give_up(flow, "task-a").outcome is TransitionOutcome.FENCED
    assert other.offer_selection(flow, OFFERS, "task-a").outcome is TransitionOutcome.FENCED
    assert [e["type"] for e in other.events(flow_id)] == ["authorization.started", "callback.received"]


def test_a_denial_racing_a_claim_leaves_the_claim_standing(store: FlowStore) -> None:
    loaded = store.create("flow-1", "LinkedIn", "profile", None, None)  # both callbacks load it awaiting
    assert store.claim_callback(loaded, TOKEN).done
    denial = store.deny(loaded, "the user did not authorize (access_denied)")
    assert denial.outcome is TransitionOutcome.CONFLICT
    assert denial.state is FlowState.VERIFYING
    assert state(store) is FlowState.VERIFYING


def context_for(store: FlowStore, handler: httpx.MockTransport) -> TaskContext:
    upstream = OktopostClient("https://api.test", "acct", "key", transport=handler)
    policy = RetryPolicy(max_attempt_seconds=0.2, backoff_multiplier=0.001, backoff_max=0.01)
    budget = UpstreamBudget(store.redis, store.names.account(store.default_account), 1000, 1.0)
    metrics = WorkerMetrics(store.redis, "t:metrics")
    upstreams = Upstreams.single(upstream, budget)
    return TaskContext(store, upstreams, policy, metrics, LeaseKeeper(store, interval=0.1))


@pytest.fixture
def sweeping(store: FlowStore) -> Iterator[RecordingEnqueuer]:
    queue = RecordingEnqueuer()
    sweeper = Sweeper(store, queue, interval=0.05)
    sweeper.start()
    yield queue
    sweeper.stop()


def test_a_live_workers_lease_outlasts_a_call_longer_than_the_lease(
    store: FlowStore, sweeping: RecordingEnqueuer
) -> None:
    def slow_answer(_request: httpx.Request) -> httpx.Response:
        time.sleep(1.5)  # past its 0.2 s timeout and the 0.6 s lease: an answer dribbled slowly
        return httpx.Response(200, json=PROFILE)

    context = context_for(store, httpx.MockTransport(slow_answer))
    flow_id = verifying(store, "profile")
    assert verify_flow(context, flow_id) is TaskOutcome.COMPLETED
    assert sweeping.enqueued == []  # never taken up again: the heartbeat kept the lease
    context.leases.stop()


def test_a_task_whose_flow_was_taken_up_stops_before_its_next_attempt(store: FlowStore) -> None:
    calls: list[httpx.Request] = []

    def lost_meanwhile(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        # while this call is out, the flow's lease lapses and another task takes it
        store.lapse_lease("flow-1")
        assert store.requeue_lapsed("flow-1", FlowState.VERIFYING, None) is RequeueOutcome.REQUEUED
        assert store.take_work("flow-1", "task-b", FlowState.VERIFYING).outcome is TakeOutcome.TAKEN
        context.leases.renew()  # the heartbeat finds another owner
        return httpx.Response(503)

    context = context_for(store, httpx.MockTransport(lost_meanwhile))
    verifying(store, "profile")
    assert verify_flow(context, "flow-1") is TaskOutcome.SKIPPED
    assert len(calls) == 1  # no retry for a flow that is not ours
    assert state(store) is FlowState.VERIFYING
    context.leases.stop()


class SkewedRedis:
    """A Redis client stand-in whose TIME runs `ahead` seconds ahead of this machine."""

    def __init__(self, ahead: float) -> None:
        self.ahead = ahead
        self.asked = 0

    def time(self) -> tuple[int, int]:
        self.asked += 1
        now = time.time() + self.ahead
        return int(now), int((now % 1) * 1_000_000)


def test_the_clock_is_redis_s_whatever_the_local_clock_says() -> None:
    redis = SkewedRedis(ahead=3600.0)
    elapsed = [0.0]  # the monotonic clock, moved by hand
    clock = RedisClock(redis, refresh=30.0, monotonic=lambda: elapsed[0])
    assert clock.now() == pytest.approx(time.time() + 3600, abs=0.5)
    assert redis.asked == 1
    elapsed[0] = 10.0
    assert clock.now() == pytest.approx(time.time() + 3610, abs=0.5)  # told by the monotonic clock
    assert redis.asked == 1
    elapsed[0] = 40.0
    assert clock.now() == pytest.approx(time.time() + 3600, abs=0.5)  # past the refresh: TIME again
    assert redis.asked == 2


def test_a_sweeper_whose_clock_runs_ahead_does_not_expire_a_live_flow(store: FlowStore) -> None:
    flow = seen_from(store, -58.5).create("flow-1", "LinkedIn", "profile", None, None)  # 1.5 s left
    ahead = seen_from(store, 2.0)  # this sweeper's machine is 2 s ahead
    assert ahead.due_deadlines(ahead.clock.read_time()) == ["flow-1"]
    assert sweep_once(ahead, RecordingEnqueuer()) == (0, 0)
    assert state(store) is FlowState.AWAITING_CALLBACK
    assert flow.seconds_left(store.clock.now()) > 0


class PushingQueue(RecordingEnqueuer):
    """A broker that is the flows' Redis: the requeue pushes the message itself; sending after it fails."""

    def prepared(self, flow_id: str, state: FlowState) -> QueuedTask | None:
        return QueuedTask("t.queue", f"{state}:{flow_id}", "", "", "task-1")

    def enqueue(self, _flow_id: str, _state: FlowState) -> None:
        raise AssertionError("the requeue must not need a second step")


def test_the_sweepers_requeue_and_its_task_are_one_step(store: FlowStore) -> None:
    flow_id = verifying(store, "profile")
    store.take_work(flow_id, "task-a", FlowState.VERIFYING)
    store.lapse_lease(flow_id)
    assert sweep_once(store, PushingQueue()) == (0, 1)
    assert store.redis.lrange("t.queue", 0, -1) == [b"verifying:flow-1"]
    assert store.redis.zscore(store.names.leases, flow_id) > time.time()
    assert store.redis.hget(store.names.flow_state(flow_id), "owner") == b""


class FailingQueue(RecordingEnqueuer):
    def enqueue(self, flow_id: str, state: FlowState) -> None:
        if flow_id == "flow-1":
            raise ConnectionError("broker away")
        super().enqueue(flow_id, state)


def test_a_requeue_that_cannot_be_sent_lapses_again_and_the_pass_goes_on(store: FlowStore) -> None:
    for flow_id in ("flow-1", "flow-2"):
        flow = store.create(flow_id, "LinkedIn", "profile", None, None)
        store.claim_callback(flow, TOKEN + flow_id[-1])
        store.lapse_lease(flow_id)
    queue = FailingQueue()
    assert sweep_once(store, queue) == (0, 1)
    assert queue.enqueued == [("flow-2", FlowState.VERIFYING)]
    assert store.redis.zscore(store.names.leases, "flow-1") == 0  # taken up again by the next pass
    queue_later = RecordingEnqueuer()
    assert sweep_once(store, queue_later) == (0, 1)
    assert queue_later.enqueued == [("flow-1", FlowState.VERIFYING)]


def test_a_selection_submitted_while_the_sweeper_looks_keeps_its_lease(store: FlowStore) -> None:
    flow_id = verifying(store)
    store.take_work(flow_id, "task-a", FlowState.VERIFYING)
    store.redis.zadd(store.names.leases, {flow_id: 0})  # a lease left over, due for the sweeper
    store.offer_selection(store.get(flow_id), OFFERS, "task-a")  # type: ignore[arg-type]
    store.redis.zadd(store.names.leases, {flow_id: 0})
    # the sweeper reads the flow awaiting its selection (no work left) ...
    looked_at = store.get(flow_id)
    assert looked_at is not None
    assert looked_at.state is FlowState.AWAITING_SELECTION
    # ... the user submits meanwhile, which queues the completion under a fresh lease ...
    assert store.submit_selection(looked_at, ["1"]).done
    # ... and the sweeper's decision, made inside its script, keeps that lease
    assert store.requeue_lapsed(flow_id, FlowState.VERIFYING, None) is RequeueOutcome.ALIVE
    assert store.redis.zscore(store.names.leases, flow_id) > time.time()


def test_marks_of_workers_gone_without_a_word_are_dropped(store: FlowStore) -> None:
    store.redis.zadd(store.names.workers, {"killed@host": time.time() - 3600})
    sweeper = Sweeper(store, RecordingEnqueuer(), interval=0.05, name="alive@host")
    sweeper.start()
    deadline = time.monotonic() + 2
    while store.redis.zscore(store.names.workers, "killed@host") is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    marks = {name.decode() for name in store.redis.zrange(store.names.workers, 0, -1)}
    sweeper.stop()
    assert marks == {"alive@host"}


def test_two_heartbeats_never_renew_a_lease_for_the_wrong_owner(store: FlowStore) -> None:
    flow_id = verifying(store, "profile")
    store.take_work(flow_id, "task-a", FlowState.VERIFYING)
    assert store.renew_leases({flow_id: "task-a"}) == set()
    store.lapse_lease(flow_id)
    store.requeue_lapsed(flow_id, FlowState.VERIFYING, None)
    store.take_work(flow_id, "task-b", FlowState.VERIFYING)
    before = store.redis.zscore(store.names.leases, flow_id)
    assert store.renew_leases({flow_id: "task-a"}) == {flow_id}
    assert store.redis.zscore(store.names.leases, flow_id) == before


def test_a_stale_failure_is_not_logged_as_a_failure(
    store: FlowStore, caplog: pytest.LogCaptureFixture
) -> None:
    def refused(_request: httpx.Request) -> httpx.Response:
        # the flow ends meanwhile (another task completed it after this one's lease lapsed)
        flow = store.get("flow-1")
        assert flow is not None
        store.lapse_lease("flow-1")
        store.requeue_lapsed("flow-1", FlowState.VERIFYING, None)
        store.take_work("flow-1", "task-b", FlowState.VERIFYING)
        assert store.complete(flow, [], "task-b").done
        return httpx.Response(200, json={"Result": False, "Errors": {"API": {"Error": "Rejected"}}})

    context = context_for(store, httpx.MockTransport(refused))
    verifying(store, "profile")
    with caplog.at_level("INFO", logger="worker.tasks.work"):
        assert verify_flow(context, "flow-1") is TaskOutcome.SKIPPED
    messages = [record.getMessage() for record in caplog.records]
    assert not any("failed" in message for message in messages)
    assert any("completed already; this task's outcome is dropped" in message for message in messages)
    context.leases.stop()
