"""A stopping worker's hand-back (scripts/hand_back.lua) and the leases of received tasks, on fakeredis."""

from __future__ import annotations

import time

import fakeredis
import pytest

from worker.events import ConnectedCredential
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore, RequeueOutcome, TakeOutcome
from worker.flows.transition import TransitionOutcome
from worker.keys import RedisNames
from worker.tasks.leases import RECEIVED_RENEWAL_GAP, RECEIVED_SETTLE_SECONDS, Held, LeaseKeeper
from worker.tasks.stopping import HANDED_BACK, RETAKE_AFTER, RETAKES, GracefulStop

TOKEN = "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"


@pytest.fixture
def store() -> FlowStore:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return FlowStore(client, RedisNames("oktopost"), Lifetimes(flow_ttl=20, token_ttl=40))


def claimed(store: FlowStore, flow_id: str = "flow-1", token: str = TOKEN) -> None:
    flow = store.create(flow_id, "LinkedIn", "profile", "user-42", None)
    assert store.claim_callback(flow, token).done


def lease_end(store: FlowStore, flow_id: str = "flow-1") -> float | None:
    end: float | None = store.redis.zscore(store.names.leases, flow_id)
    return end


def test_a_flow_handed_back_fences_its_task_out_and_is_taken_up_at_once(store: FlowStore) -> None:
    claimed(store)
    taken = store.take_work("flow-1", "task-a", FlowState.VERIFYING)
    assert taken.outcome is TakeOutcome.TAKEN

    assert store.hand_back("flow-1", "task-a")
    assert store.requeue_lapsed("flow-1", FlowState.VERIFYING, None) is RequeueOutcome.REQUEUED
    assert store.take_work("flow-1", "task-b", FlowState.VERIFYING).outcome is TakeOutcome.TAKEN
    # what the stopping task still does changes nothing
    assert taken.flow is not None
    credential = ConnectedCredential(id="003-1", name="Me", status="valid", network="LinkedIn")
    late = store.complete(taken.flow, [credential], "task-a")
    assert late.outcome is TransitionOutcome.FENCED


def test_only_the_holder_hands_a_flow_back(store: FlowStore) -> None:
    claimed(store)
    store.take_work("flow-1", "task-b", FlowState.VERIFYING)
    before = lease_end(store)

    assert not store.hand_back("flow-1", "task-a")  # taken by another task meanwhile
    assert not store.hand_back("flow-1", "")  # a received task's flow that another task took
    assert not store.hand_back("nope", "")
    assert lease_end(store) == before


def test_a_received_task_s_flow_goes_back_with_the_owner_it_was_queued_with(store: FlowStore) -> None:
    claimed(store)
    assert store.hand_back("flow-1", "")
    assert store.requeue_lapsed("flow-1", FlowState.VERIFYING, None) is RequeueOutcome.REQUEUED


def test_a_received_task_s_flow_is_held_on_the_working_lease_until_its_task_starts(store: FlowStore) -> None:
    claimed(store)
    keeper = LeaseKeeper(store, interval=3600)  # renewals by hand below
    queued_until = lease_end(store)
    assert queued_until is not None

    keeper.expect("flow-1")
    keeper.renew()
    renewed = lease_end(store)
    assert renewed is not None
    assert renewed < queued_until  # the working lease (a quarter of the token) is the shorter one

    keeper.started("flow-1")
    keeper.renew()
    assert lease_end(store) == renewed  # the task holds it now, or nobody does
    keeper.stop()


def test_the_heartbeat_renews_a_received_flow_early_only_while_its_task_waits_for_a_thread(
    store: FlowStore,
) -> None:
    claimed(store, "flow-1")
    claimed(store, "flow-2", TOKEN[:-4] + "0000")
    claimed(store, "flow-3", TOKEN[:-4] + "1111")
    assert store.take_work("flow-3", "task-c", FlowState.VERIFYING).outcome is TakeOutcome.TAKEN
    working_until = lease_end(store, "flow-3")
    keeper = LeaseKeeper(store, interval=3600)  # no round of its own while the test runs
    with keeper.hold("flow-3", "task-c"):  # a task at work: renewed on the keeper's rounds only
        keeper.expect("flow-1")
        keeper.started("flow-1")  # a free thread started it at once: it takes its lease itself
        time.sleep(RECEIVED_SETTLE_SECONDS + RECEIVED_RENEWAL_GAP + 0.2)
        assert lease_end(store, "flow-3") == working_until  # the receipt cost no renewal

        waiting_until = lease_end(store, "flow-2")
        keeper.expect("flow-2")  # this one waits for a thread
        deadline = time.monotonic() + RECEIVED_SETTLE_SECONDS + 1.0
        while lease_end(store, "flow-2") == waiting_until and time.monotonic() < deadline:
            time.sleep(0.02)
        renewed = lease_end(store, "flow-2")
    keeper.stop()
    assert renewed is not None
    assert waiting_until is not None
    assert renewed < waiting_until  # on the working lease now: a paused process lets it lapse soon


def test_a_closed_keeper_renews_nothing_and_hands_every_flow_over(store: FlowStore) -> None:
    claimed(store)
    keeper = LeaseKeeper(store, interval=3600)
    handed: list[Held] = []
    with keeper.hold("flow-1", "task-a"):
        keeper.expect("flow-2")
        held = keeper.close(handed.append)
        assert sorted((h.flow_id, h.owner) for h in held) == [("flow-1", "task-a"), ("flow-2", "")]
        with keeper.hold("flow-3", "task-c"):  # a task that takes its flow once the worker stops
            assert [h.flow_id for h in handed] == ["flow-3"]
    keeper.stop()


class _Broker:
    """The task queue a stopping worker hands flows back to: it records each task queued; a flow listed
    in `taken_by` is taken by that task of another worker as soon as its task is queued, the others'
    tasks are popped by the stopping worker's own fetch and never run (the message dies with it)."""

    def __init__(self, store: FlowStore, taken_by: dict[str, str]) -> None:
        self.store = store
        self.taken_by = taken_by
        self.queued: list[str] = []

    def prepared(self, _flow_id: str, _state: FlowState) -> None:
        return None  # queued by enqueue(), after the lease's hand-over

    def enqueue(self, flow_id: str, state: FlowState) -> None:
        self.queued.append(flow_id)
        if flow_id in self.taken_by:
            assert self.store.take_work(flow_id, self.taken_by[flow_id], state).outcome is TakeOutcome.TAKEN


def test_a_flow_handed_back_that_no_task_takes_is_queued_again_while_the_grace_lasts(
    store: FlowStore,
) -> None:
    claimed(store, "flow-1")
    second = store.create("flow-2", "LinkedIn", "profile", "user-43", None)
    store.claim_callback(second, TOKEN[:-1] + "0")  # a token of its own
    for flow_id, owner in (("flow-1", "task-a"), ("flow-2", "task-b")):
        assert store.take_work(flow_id, owner, FlowState.VERIFYING).outcome is TakeOutcome.TAKEN
    broker = _Broker(store, {"flow-2": "other-worker-task"})
    keeper = LeaseKeeper(store, interval=3600)
    stop = GracefulStop(store, broker, keeper, grace=1.0)
    with keeper.hold("flow-1", "task-a"), keeper.hold("flow-2", "task-b"):
        stop._hand_back_all()  # what SIGTERM starts on a thread of its own (its exit aside)
    keeper.stop()

    # flow-1's task went to a fetch of the stopping worker: queued again, RETAKES times in the grace;
    # flow-2's was taken by another worker at once: queued once
    assert broker.queued.count("flow-1") == 1 + RETAKES
    assert broker.queued.count("flow-2") == 1
    assert store.untaken("flow-1")
    assert not store.untaken("flow-2")


def test_a_flow_another_workers_sweeper_queued_first_is_watched_too(store: FlowStore) -> None:
    """The hand-back lapses the flow's lease; another worker's sweeper may queue its task before this
    worker's own requeue does (which then finds the lease alive and queues nothing), and that task may
    go to this worker's fetch and die with it: the flow is queued again all the same."""
    claimed(store, "flow-1")
    assert store.take_work("flow-1", "task-a", FlowState.VERIFYING).outcome is TakeOutcome.TAKEN
    broker = _Broker(store, {})

    class FirstSweeper(_Broker):
        def prepared(self, flow_id: str, state: FlowState) -> None:
            if not broker.queued:  # the other worker's sweeper looks between the hand-back and the requeue
                assert store.requeue_lapsed(flow_id, state, None) is RequeueOutcome.REQUEUED
                broker.enqueue(flow_id, state)  # popped by the stopping worker's fetch: never run

    keeper = LeaseKeeper(store, interval=3600)
    requeues = FirstSweeper(store, {})  # the stopping worker's own requeues
    stop = GracefulStop(store, requeues, keeper, grace=1.0)
    with keeper.hold("flow-1", "task-a"):
        stop._hand_back_all()
    keeper.stop()

    assert broker.queued == ["flow-1"]  # the sweeper's task, the stopping worker's requeue found it alive
    assert requeues.queued.count("flow-1") == RETAKES


def test_a_flows_requeued_task_fetched_by_the_stopping_worker_queues_it_again_and_the_exit_waits(
    store: FlowStore,
) -> None:
    """The hand-back's own requeue went to this worker's fetch, and its task starts here: the flow is
    queued again at once; and the process's exit waits for the looks at flows no task took, though
    Celery's shutdown ends at once."""
    claimed(store, "flow-1")
    assert store.take_work("flow-1", "task-a", FlowState.VERIFYING).outcome is TakeOutcome.TAKEN
    broker = _Broker(store, {})
    keeper = LeaseKeeper(store, interval=3600)
    exits: list[int] = []
    stop = GracefulStop(store, broker, keeper, grace=2.0, exit_process=exits.append)
    with keeper.hold("flow-1", "task-a"):
        stop.begin()  # SIGTERM
        stop._all_handed_back.wait(2)
    keeper.stop()
    assert broker.queued == ["flow-1"]
    assert stop.hand_back_unstarted("flow-1") == HANDED_BACK  # that task, started here
    assert broker.queued == ["flow-1", "flow-1"]  # queued again at once, not after a look
    started = time.monotonic()
    stop.wait()  # what the worker's shutdown does before the process exits
    assert time.monotonic() - started >= RETAKE_AFTER * RETAKES - 0.1
    assert broker.queued.count("flow-1") == 2 + RETAKES  # no task took it: each look queued it again
    assert exits == []  # the grace (2 s) is not over: the process would still run
