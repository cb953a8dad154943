"""The flow store and its Lua step, on fakeredis: states, seq, one terminal event, publishes."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest

from tests.support.clocks import seen_from
from tests.support.shim import RecordingEnqueuer
from worker.events import ConnectedCredential, EntityOffer, FlowEvent, parse_event
from worker.flows.flow import Flow, FlowState, Lifetimes, token_fingerprint
from worker.flows.store import FlowStore, RequeueOutcome, TakeOutcome
from worker.flows.transition import TransitionOutcome
from worker.keys import RedisNames
from worker.observing.metrics import WorkersCollector
from worker.tasks.sweeper import Sweeper

TOKEN = "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"


@pytest.fixture
def store() -> FlowStore:
    server = fakeredis.FakeServer()
    return FlowStore(
        fakeredis.FakeRedis(server=server), RedisNames("oktopost"), Lifetimes(flow_ttl=20, token_ttl=30)
    )


def new_flow(store: FlowStore, entity_type: str = "profile") -> Flow:
    return store.create("flow-1", "LinkedIn", entity_type, "user-42", "https://app.example/done")


def test_create_publishes_started_with_seq_1(store: FlowStore) -> None:
    pubsub = store.redis.pubsub()
    pubsub.subscribe("oktopost:events", "oktopost:flow:flow-1")
    pubsub.get_message(timeout=1)
    pubsub.get_message(timeout=1)
    flow = new_flow(store)
    assert flow.state is FlowState.AWAITING_CALLBACK
    messages = [pubsub.get_message(timeout=1) for _ in range(2)]
    channels = sorted(m["channel"].decode() for m in messages if m)
    assert channels == ["oktopost:events", "oktopost:flow:flow-1"]
    event = json.loads(messages[0]["data"])
    assert event["seq"] == 1
    assert event["type"] == "authorization.started"
    assert event["reference"] == "user-42"
    assert event["entity_type"] == "profile"
    assert store.events("flow-1") == [event]
    assert store.due_deadlines(time.time() + 21) == ["flow-1"]


def test_create_twice_refused(store: FlowStore) -> None:
    new_flow(store)
    with pytest.raises(RuntimeError):
        new_flow(store)


def test_claim_keeps_token_outside_the_hash_and_moves_deadline(store: FlowStore) -> None:
    flow = new_flow(store)
    step = store.claim_callback(flow, TOKEN)
    assert step.done
    assert step.seq == 2
    claimed = store.get("flow-1")
    assert claimed is not None
    assert claimed.state is FlowState.VERIFYING
    assert claimed.token_fp == token_fingerprint(TOKEN)
    assert TOKEN not in str(store.redis.hgetall("oktopost:flow:flow-1:state"))
    assert store.token("flow-1") == TOKEN
    assert 28 <= store.redis.ttl("oktopost:flow:flow-1:token") <= 30
    assert abs(claimed.deadline - (time.time() + 30)) < 2
    assert store.due_leases(time.time() + 1000) == ["flow-1"]


def test_second_claim_reports_conflict_with_fingerprint(store: FlowStore) -> None:
    flow = new_flow(store)
    store.claim_callback(flow, TOKEN)
    again = store.claim_callback(flow, TOKEN)
    assert again.outcome is TransitionOutcome.CONFLICT
    assert again.state is FlowState.VERIFYING
    assert again.token_fp == token_fingerprint(TOKEN)
    assert len(store.events("flow-1")) == 2


def test_page_flow_through_selection_to_completed(store: FlowStore) -> None:
    flow = new_flow(store, "page")
    store.claim_callback(flow, TOKEN)
    offers = [
        EntityOffer(id=str(i), name=f"Page {i}", network="LinkedIn", is_connected=i == 1) for i in (1, 2, 3)
    ]
    owner = "task-a"
    assert store.take_work("flow-1", owner, FlowState.VERIFYING).outcome is TakeOutcome.TAKEN
    assert store.offer_selection(store.get("flow-1"), offers, owner).done  # type: ignore[arg-type]
    waiting = store.get("flow-1")
    assert waiting is not None
    assert waiting.offered_ids() == ["1", "2", "3"]
    assert store.due_leases(time.time() + 1000) == []
    assert store.submit_selection(waiting, ["2", "3"]).done
    assert store.submit_selection(waiting, ["2"]).outcome is TransitionOutcome.CONFLICT
    completing = store.get("flow-1")
    assert completing is not None
    assert completing.selected_ids == ["2", "3"]
    creds = [ConnectedCredential(id="003-2", name="Page 2", status="valid", network="LinkedIn")]
    assert store.take_work("flow-1", "task-b", FlowState.COMPLETING).outcome is TakeOutcome.TAKEN
    assert store.complete(completing, creds, "task-b").done
    events = [parse_event(json.dumps(e)) for e in store.events("flow-1")]
    assert all(isinstance(e, FlowEvent) for e in events)
    assert [e.seq for e in events if isinstance(e, FlowEvent)] == [1, 2, 3, 4, 5]
    assert [e.type for e in events][-1] == "connection.completed"
    assert store.token("flow-1") is None
    assert store.due_deadlines(time.time() + 10**6) == []
    assert store.due_leases(time.time() + 10**6) == []


def test_exactly_one_terminal_event_whatever_races(store: FlowStore) -> None:
    flow = new_flow(store)
    store.claim_callback(flow, TOKEN)
    verifying = store.get("flow-1")
    assert verifying is not None
    creds = [ConnectedCredential(id="003-1", name="Me", status="valid", network="LinkedIn")]
    store.take_work("flow-1", "task-a", FlowState.VERIFYING)
    outcomes = [
        store.complete(verifying, creds, "task-a").outcome,
        store.fail(verifying, "token_invalid", "gone", 1, "task-a").outcome,
        store.give_up(verifying, "task-a").outcome,
        store.expire(verifying).outcome,
        store.complete(verifying, creds, "task-a").outcome,
    ]
    assert outcomes.count(TransitionOutcome.DONE) == 1
    types = [e["type"] for e in store.events("flow-1")]
    assert types == ["authorization.started", "callback.received", "connection.completed"]


def test_expire_waits_for_the_deadline_on_redis_clock(store: FlowStore) -> None:
    flow = new_flow(store)
    assert store.expire(flow).outcome is TransitionOutcome.EARLY
    # a process whose clock runs ahead cannot end the flow early: Redis's own clock decides
    assert seen_from(store, 30).expire(flow).outcome is TransitionOutcome.EARLY
    store.redis.delete(store.names.flow_state("flow-1"))
    flow = seen_from(store, -21).create("flow-1", "LinkedIn", "profile", None, None)  # its 20 s are over
    step = store.expire(flow)
    assert step.done
    last = store.events("flow-1")[-1]
    assert last["type"] == "authorization.expired"
    assert last["data"] == {"stage": "callback"}
    assert store.get("flow-1").state is FlowState.EXPIRED  # type: ignore[union-attr]


def test_expire_after_claim_reports_verify_stage(store: FlowStore) -> None:
    flow = seen_from(store, -21).create("flow-1", "LinkedIn", "profile", None, None)
    store.claim_callback(flow, TOKEN)
    claimed = store.get("flow-1")
    assert claimed is not None
    # the callback-stage deadline has passed, but the claim moved the deadline: not yet
    assert store.expire(claimed).outcome is TransitionOutcome.EARLY
    store.redis.hset(store.names.flow_state("flow-1"), "deadline", repr(time.time() - 1))  # the token's end
    assert store.expire(claimed).done
    assert store.events("flow-1")[-1]["data"] == {"stage": "verify"}


def test_missing_flow(store: FlowStore) -> None:
    ghost = Flow("nope", FlowState.VERIFYING, "LinkedIn", "profile", None, None, 0.0, 0.0)
    assert store.fail(ghost, "x", "y", 1, "task-a").outcome is TransitionOutcome.MISSING
    assert not store.redis.exists("oktopost:flow:nope:state")


def test_lapsed_lease_taken_up_once(store: FlowStore) -> None:
    flow = new_flow(store)
    store.claim_callback(flow, TOKEN)
    assert store.requeue_lapsed("flow-1", FlowState.VERIFYING, None) is RequeueOutcome.ALIVE
    store.lapse_lease("flow-1")
    assert store.requeue_lapsed("flow-1", FlowState.VERIFYING, None) is RequeueOutcome.REQUEUED
    assert store.requeue_lapsed("flow-1", FlowState.VERIFYING, None) is RequeueOutcome.ALIVE


def test_work_has_one_owner_until_its_lease_lapses(store: FlowStore) -> None:
    flow = new_flow(store)
    store.claim_callback(flow, TOKEN)
    assert store.take_work("flow-1", "task-a", FlowState.VERIFYING).outcome is TakeOutcome.TAKEN
    duplicate = store.take_work("flow-1", "task-b", FlowState.VERIFYING)
    assert duplicate.outcome is TakeOutcome.BUSY
    assert duplicate.flow is None
    assert duplicate.token is None
    assert store.take_work("flow-1", "task-a", FlowState.VERIFYING).outcome is TakeOutcome.TAKEN
    wrong_state = store.take_work("flow-1", "task-b", FlowState.COMPLETING)
    assert wrong_state.outcome is TakeOutcome.GONE
    # the owner dies: its lease lapses, the sweeper takes it and clears the owner, a new task takes over
    store.lapse_lease("flow-1")
    assert store.requeue_lapsed("flow-1", FlowState.VERIFYING, None) is RequeueOutcome.REQUEUED
    assert store.take_work("flow-1", "task-b", FlowState.VERIFYING).outcome is TakeOutcome.TAKEN
    assert store.take_work("nope", "task-c", FlowState.VERIFYING).outcome is TakeOutcome.GONE


def test_taking_work_hands_over_the_flow_and_its_token(store: FlowStore) -> None:
    flow = new_flow(store)
    store.claim_callback(flow, TOKEN)
    before = time.time()
    taken = store.take_work("flow-1", "task-a", FlowState.VERIFYING)
    assert taken.outcome is TakeOutcome.TAKEN
    assert taken.token == TOKEN
    assert taken.flow == store.get("flow-1")  # the flow as stored
    assert taken.flow is not None
    assert taken.flow.state is FlowState.VERIFYING
    assert before + store.lifetimes.lease - 0.01 <= taken.leased_until <= time.time() + store.lifetimes.lease
    assert store.redis.zscore(store.names.leases, "flow-1") == pytest.approx(taken.leased_until)
    assert TOKEN not in repr(taken)  # error reporters print reprs
    store.redis.delete(store.names.flow_token("flow-1"))  # the token's TTL ran out
    taken_again = store.take_work("flow-1", "task-a", FlowState.VERIFYING)
    assert taken_again.outcome is TakeOutcome.TAKEN
    assert taken_again.token is None


def test_a_named_sweeper_marks_its_worker_consuming_until_it_stops(store: FlowStore) -> None:
    """Marked as a worker, and as one serving the kinds of task it serves (here deliveries only)."""
    sweeper = Sweeper(store, RecordingEnqueuer(), interval=0.05, name="w1@host", serves=["deliveries"])
    before = time.time()
    sweeper.start()
    deadline = time.monotonic() + 2
    while store.redis.zscore(store.names.workers, "w1@host") is None and time.monotonic() < deadline:
        time.sleep(0.01)
    marked = store.redis.zscore(store.names.workers, "w1@host")
    delivering = store.redis.zscore(store.names.queue_workers("deliveries"), "w1@host")
    flows = store.redis.zscore(store.names.queue_workers("flows"), "w1@host")
    sweeper.stop()
    assert marked is not None
    assert before <= marked <= time.time()
    assert (delivering, flows) == (marked, None)
    assert store.redis.zscore(store.names.workers, "w1@host") is None
    assert store.redis.zscore(store.names.queue_workers("deliveries"), "w1@host") is None


def test_the_workers_by_kind_of_task_count_a_worker_of_an_earlier_version_as_serving_both(
    store: FlowStore,
) -> None:
    """NoWorkerConsuming reads okc_queue_workers: a deploy that restarts the shim first must not see the
    workers it has not restarted yet (marked as workers only) as serving nothing."""
    now = store.clock.now()
    names = store.names
    store.redis.zadd(names.workers, {"old@host": now, "deliveries@host": now, "gone@host": now - 60})
    store.redis.zadd(names.queue_workers("deliveries"), {"deliveries@host": now})
    families = {family.name: family for family in WorkersCollector(store.redis, names).collect()}
    assert [sample.value for sample in families["okc_workers_consuming"].samples] == [2]
    counts = {sample.labels["queue"]: sample.value for sample in families["okc_queue_workers"].samples}
    assert counts == {"flows": 1, "deliveries": 2}


def test_every_event_carries_its_tenant_and_reaches_the_all_flows_stream_and_the_tenant_channel(
    store: FlowStore,
) -> None:
    pubsub = store.redis.pubsub()
    pubsub.subscribe("oktopost:tenant:default:events")
    pubsub.get_message(timeout=1)
    flow = new_flow(store)
    store.claim_callback(flow, TOKEN)
    published = pubsub.get_message(timeout=1)
    assert published is not None
    assert json.loads(published["data"])["tenant"] == "default"
    streamed = [json.loads(fields[b"event"]) for _, fields in store.redis.xrange("oktopost:events:stream")]
    assert streamed == store.events("flow-1")  # the same JSON as the flow's own stream, in order
    assert [event["tenant"] for event in streamed] == ["default", "default"]
