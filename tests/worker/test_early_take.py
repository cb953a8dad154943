"""A flow task's take sent when the task is received (worker.tasks.celery_tasks, work.EarlyTake), on a real
Redis: the flow is taken before the task starts, the task works on with that take, and a task that does
not start (the worker stopping, a revocation) gives back what its take took. Its script call is sent on
one thread and read on another (worker.scripts.Step.send), through Redis restarting its scripts and a
connection killed under it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.thread import TaskPool as ThreadPool

from tests.support.shim import RecordingEnqueuer
from tests.support.stack import RedisServer
from tests.support.work import FAST, PROFILE, TOKEN, Answers
from worker import scripts
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore, TakeOutcome
from worker.keys import RedisNames
from worker.observing.metrics import WorkerMetrics
from worker.oktopost import OktopostClient
from worker.queueing.names import VERIFY_TASK
from worker.tasks import celery_tasks, work
from worker.tasks.leases import LeaseKeeper
from worker.tasks.stopping import HANDED_BACK, GracefulStop
from worker.tasks.work import TaskContext, TaskOutcome
from worker.upstream.budget import UpstreamBudget
from worker.upstream.clients import Upstreams


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_server.url) as connected:
        yield connected


@pytest.fixture
def context(client: redis.Redis) -> Iterator[TaskContext]:
    names = RedisNames(f"early-{uuid.uuid4().hex[:8]}")
    store = FlowStore(client, names, Lifetimes(flow_ttl=60, token_ttl=30, lease=5))
    upstream = OktopostClient(
        "https://api.test",
        "acct",
        "key",
        transport=httpx.MockTransport(Answers(httpx.Response(200, json=PROFILE))),
    )
    budget = UpstreamBudget(client, names.account(store.default_account), 1000, 1.0)
    made = TaskContext(
        store, Upstreams.single(upstream, budget), FAST, WorkerMetrics(client, "m"), LeaseKeeper(store)
    )
    client.script_load(scripts.source("take_work"))  # as a worker's first take has loaded it
    yield made
    made.leases.stop()


@pytest.fixture
def in_worker(context: TaskContext, monkeypatch: pytest.MonkeyPatch) -> TaskContext:
    """celery_tasks as a worker process of two threads, none busy, runs it: on `context`."""
    monkeypatch.setattr(celery_tasks.runtime, "task_context", lambda: context)
    ignored = SimpleNamespace(received=_ignore, started=_ignore, succeeded=_ignore, revoked=_ignore)
    monkeypatch.setattr(celery_tasks, "_events", ignored)
    monkeypatch.setattr(celery_tasks, "_unparker", None)
    monkeypatch.setattr(celery_tasks, "_graceful", None)
    monkeypatch.setattr(celery_tasks.worker_state, "reserved_requests", set())
    return context


def _ignore(*_: object) -> None:
    """A task event not sent (tests/worker/test_flow_task_events.py tests them)."""


def claimed(context: TaskContext, flow_id: str) -> str:
    flow = context.store.create(flow_id, "LinkedIn", "profile", None, None)
    assert context.store.claim_callback(flow, TOKEN).done
    return flow_id


def received(flow_id: str, task_id: str, pool: type[Any] = ThreadPool) -> Any:
    """The flow task's receipt by a worker of two threads (or another `pool` of two)."""
    request = SimpleNamespace(id=task_id, name=VERIFY_TASK, args=[flow_id], eta=None, hostname="flows@test")
    consumer = SimpleNamespace(controller=SimpleNamespace(concurrency=2), pool=object.__new__(pool))
    celery_tasks._hold_received_flow(sender=consumer, request=request)
    return SimpleNamespace(request=request)


def owner_of(context: TaskContext, flow_id: str) -> str:
    owner = context.store.redis.hget(context.store.names.flow_state(flow_id), "owner")
    return owner.decode() if owner else ""


def taken_by(context: TaskContext, flow_id: str, owner: str) -> bool:
    """Whether Redis has made the take `owner` sent (on a connection of its own: soon, not at once)."""
    ends = time.monotonic() + 2
    while owner_of(context, flow_id) != owner:
        if time.monotonic() > ends:
            return False
        time.sleep(0.005)
    return True


def slot_held(context: TaskContext, early: work.EarlyTake) -> bool:
    """Whether the first call's slot the take asked for is held (scored by the latest its call can end),
    rather than ended (scored by now, freed a period later) or never granted."""
    upstream = context.upstreams.get(context.store.default_account)
    assert upstream is not None
    assert early.waiter  # the take made an ask
    score = context.store.redis.zscore(upstream.budget.names.budget_window, early.waiter)
    return score is not None and score > time.time() + 0.5


def test_a_received_task_takes_its_flow_and_works_on_with_that_take(in_worker: TaskContext) -> None:
    flow_id = claimed(in_worker, "flow-early")
    task = received(flow_id, "t-early")
    early = celery_tasks._early_takes["t-early"]
    assert taken_by(in_worker, flow_id, early.owner)  # taken at receipt, before the task started
    assert in_worker.leases._held[flow_id].owner == early.owner  # renewed as its task waits
    assert slot_held(in_worker, early)  # and its first call's slot asked for

    assert celery_tasks._flow_task(task, flow_id, work.verify_flow) == "completed"
    assert "t-early" not in celery_tasks._early_takes
    assert flow_id not in in_worker.leases._held
    assert [event["type"] for event in in_worker.store.events(flow_id)][-1] == "connection.completed"


def test_a_task_waiting_for_a_thread_takes_its_flow_when_it_starts(in_worker: TaskContext) -> None:
    flow_id = claimed(in_worker, "flow-later")
    celery_tasks.worker_state.reserved_requests.update({"running-1", "running-2"})  # both threads busy
    task = received(flow_id, "t-later")
    assert "t-later" not in celery_tasks._early_takes
    assert owner_of(in_worker, flow_id) == ""  # queued, held as received
    assert in_worker.leases._held[flow_id].owner == ""
    assert celery_tasks._flow_task(task, flow_id, work.verify_flow) == "completed"


def test_a_task_run_in_another_process_takes_its_flow_when_it_starts(in_worker: TaskContext) -> None:
    """A prefork pool's child, not the process that received the task, runs it: it could not find the
    take, so none is sent."""
    flow_id = claimed(in_worker, "flow-prefork")
    task = received(flow_id, "t-prefork", pool=PreforkPool)
    assert "t-prefork" not in celery_tasks._early_takes
    assert owner_of(in_worker, flow_id) == ""
    assert celery_tasks._flow_task(task, flow_id, work.verify_flow) == "completed"


def test_an_early_take_that_finds_the_flow_busy_leaves_it_alone(in_worker: TaskContext) -> None:
    flow_id = claimed(in_worker, "flow-busy")
    assert (
        in_worker.store.take_work(flow_id, "another-task", FlowState.VERIFYING).outcome is TakeOutcome.TAKEN
    )
    task = received(flow_id, "t-busy")
    early = celery_tasks._early_takes["t-busy"]
    assert celery_tasks._flow_task(task, flow_id, work.verify_flow) == TaskOutcome.SKIPPED.value
    assert owner_of(in_worker, flow_id) == "another-task"
    assert not slot_held(in_worker, early)  # no ask: the take found it busy


def test_a_task_started_while_the_worker_stops_hands_back_what_its_take_took(
    in_worker: TaskContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow_id = claimed(in_worker, "flow-stopping")
    task = received(flow_id, "t-stopping")
    early = celery_tasks._early_takes["t-stopping"]
    assert taken_by(in_worker, flow_id, early.owner)
    queue = RecordingEnqueuer()
    stopping = GracefulStop(in_worker.store, queue, in_worker.leases, grace=5)
    stopping._requested.set()  # SIGTERM came after the receipt (begin() would also hand back every held flow)
    monkeypatch.setattr(celery_tasks, "_graceful", stopping)

    assert celery_tasks._flow_task(task, flow_id, work.verify_flow) == HANDED_BACK
    assert owner_of(in_worker, flow_id) == ""  # fenced out, its task queued again for another worker
    assert queue.enqueued == [(flow_id, FlowState.VERIFYING)]
    assert not slot_held(in_worker, early)  # the slot its take asked for went back
    assert in_worker.store.get(flow_id).state is FlowState.VERIFYING  # type: ignore[union-attr]


def test_a_revoked_task_gives_its_ask_back_and_its_flow_is_no_longer_renewed(in_worker: TaskContext) -> None:
    flow_id = claimed(in_worker, "flow-revoked")
    task = received(flow_id, "t-revoked")
    early = celery_tasks._early_takes["t-revoked"]
    assert taken_by(in_worker, flow_id, early.owner)
    assert slot_held(in_worker, early)
    celery_tasks._revoked_flow_task(sender=SimpleNamespace(name=VERIFY_TASK), request=task.request)
    assert "t-revoked" not in celery_tasks._early_takes
    assert flow_id not in in_worker.leases._held  # its lease lapses, and a sweeper queues it again
    assert not slot_held(in_worker, early)


def test_a_script_sent_on_one_thread_is_read_on_another(client: redis.Redis) -> None:
    step = scripts.register(client, "metrics_add")
    key = f"sent-{uuid.uuid4().hex[:8]}"
    sent = step.send(keys=[key], args=["calls", 2])
    connections = step._connections
    assert connections is not None
    free = len(connections._free)
    answers: list[Any] = []
    reader = threading.Thread(target=lambda: answers.append(sent.answer()))
    reader.start()
    reader.join(5)
    assert answers == [1]
    assert client.hget(key, "calls") == b"2"
    assert len(connections._free) == free + 1  # its connection back in the set, for the next call
    assert sent.answer() is None  # read once
    assert step(keys=[key], args=["calls", 1]) == 1  # the connection it gave back serves the next call
    assert client.hget(key, "calls") == b"3"


def test_a_sent_script_is_made_again_when_redis_lost_it_or_its_connection_died(client: redis.Redis) -> None:
    step = scripts.register(client, "metrics_add")
    key = f"sent-{uuid.uuid4().hex[:8]}"
    step(keys=[key], args=["calls", 1])  # loaded
    client.script_flush()
    step.send(keys=[key], args=["calls", 1]).answer()  # NOSCRIPT: loaded again and made
    assert client.hget(key, "calls") == b"2"

    connections = step._connections
    assert connections is not None
    connection = connections._free[-1]  # the connection the next call takes
    sent = step.send(keys=[key], args=["calls", 1])
    assert connection not in connections._free  # out of the set until the answer is read
    connection.disconnect()  # the connection dies before its answer is read
    sent.answer()  # made again on a new one; the first may or may not have run
    assert client.hget(key, "calls") in (b"3", b"4")  # as `evalsha` retries a call whose answer is lost
