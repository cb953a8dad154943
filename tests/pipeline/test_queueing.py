"""The shim's task messages, pushed by the flow's own Lua step: the same message and task-sent event
that Celery's `apply_async` sends, queued in the same atomic step as the claim (or the selection), or
not at all."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis
from celery import Celery
from celery.utils.saferepr import saferepr

import worker.flows.enqueuer as enqueuer_module
import worker.tasks.celery_tasks  # noqa: F401 - defines our tasks, which every Celery app shares
from tests.support.stack import RedisServer
from worker.flows.enqueuer import COMPLETE_TASK, VERIFY_TASK, Enqueuer, QueuedTask, TaskMessages, task_for
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.flows.transition import TransitionOutcome
from worker.keys import RedisNames
from worker.queueing.versions import LibraryVersions

TOKEN = "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"
FLOW_ID = "ab" * 20
# what differs between any two messages, whoever sends them: ids, the moment, the sender's clock
_PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag", "uuid", "timestamp", "clock", "pid"}
# whatever is installed: this file is what tells whether the hand-built messages hold on a release
AS_TESTED = LibraryVersions(celery="5.7.0", kombu="5.7.0")


def _app(broker_url: str, queue: str) -> Celery:
    app = Celery("queueing-test", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = broker_url
    app.conf.task_default_queue = queue
    return app


def _decoded(raw: bytes | str) -> dict[str, Any]:
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return _without_ids(message)


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<id>" if k in _PER_MESSAGE else _without_ids(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_ids(item) for item in value]
    return value


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[tuple[Celery, redis.Redis, str]]:
    queue = f"q{uuid.uuid4().hex[:8]}.celery"
    app = _app(redis_server.url, queue)
    client = redis_server.client()
    yield app, client, queue
    client.delete(queue)
    app.close()


@pytest.mark.integration
@pytest.mark.parametrize("state", [FlowState.VERIFYING, FlowState.COMPLETING])
def test_the_prepared_message_and_event_are_what_apply_async_sends(
    broker: tuple[Celery, redis.Redis, str], state: FlowState
) -> None:
    app, client, queue = broker
    enqueuer = Enqueuer(app, app.conf.broker_url, versions=AS_TESTED)
    listener = client.pubsub()
    listener.psubscribe("*celeryev/task.sent")
    assert listener.get_message(timeout=2)["type"] == "psubscribe"

    enqueuer.enqueue(FLOW_ID, state)  # apply_async
    sent = client.rpop(queue)
    sent_event = listener.get_message(timeout=2)
    prepared = enqueuer.prepared(FLOW_ID, state)
    listener.close()

    assert isinstance(sent, bytes)
    assert sent_event is not None
    assert prepared is not None
    assert json.loads(prepared.message)["headers"]["task"] == task_for(state)
    assert prepared.queue == queue
    assert _decoded(prepared.message) == _decoded(sent)
    assert json.loads(prepared.message)["headers"]["id"] == prepared.task_id
    assert prepared.event_channel == sent_event["channel"].decode()
    assert _decoded(prepared.event) == _decoded(sent_event["data"])
    assert _decoded(prepared.event)["body"]["uuid"] == "<id>"
    assert json.loads(base64.b64decode(json.loads(prepared.event)["body"]))["uuid"] == prepared.task_id


def test_without_sent_events_there_is_no_event_to_publish() -> None:
    app = _app("redis://127.0.0.1:1/0", "quiet.celery")  # never connected to: no event, no channel
    app.conf.task_send_sent_event = False
    prepared = Enqueuer(app, app.conf.broker_url, versions=AS_TESTED).prepared(FLOW_ID, FlowState.VERIFYING)
    assert prepared is not None
    assert prepared.event_channel == ""
    assert prepared.event == ""
    assert json.loads(base64.b64decode(json.loads(prepared.message)["body"]))[0] == [FLOW_ID]


def test_the_task_follows_the_state() -> None:
    assert task_for(FlowState.VERIFYING) == VERIFY_TASK
    assert task_for(FlowState.COMPLETING) == COMPLETE_TASK


def test_our_tasks_messages_say_their_results_are_ignored() -> None:
    from worker.tasks.celery_app import app

    enqueuer = Enqueuer(app, app.conf.broker_url, versions=AS_TESTED)
    for state, name in ((FlowState.VERIFYING, VERIFY_TASK), (FlowState.COMPLETING, COMPLETE_TASK)):
        prepared = enqueuer.prepared(FLOW_ID, state)
        assert prepared is not None
        headers = json.loads(prepared.message)["headers"]
        assert headers["task"] == name
        assert headers["ignore_result"] is True


def test_the_step_queues_only_when_the_broker_is_the_flows_redis() -> None:
    from worker.tasks.celery_app import app

    with_step = Enqueuer(app, app.conf.broker_url, versions=AS_TESTED)
    after_transition = Enqueuer(app, "redis://elsewhere.example:6379/3", versions=AS_TESTED)
    assert with_step.prepared(FLOW_ID, FlowState.VERIFYING) is not None
    assert after_transition.prepared(FLOW_ID, FlowState.VERIFYING) is None


# --- the step pushes it, atomically -----------------------------------------------------------------------


def _queued(name: str = "q.celery") -> QueuedTask:
    return QueuedTask(name, f"message for {FLOW_ID}", "/0.celeryev/task.sent", "sent event", "task-1")


@pytest.fixture
def store() -> FlowStore:
    return FlowStore(fakeredis.FakeRedis(), RedisNames("oktopost"), Lifetimes())


def test_a_claim_queues_its_task_and_publishes_the_sent_event_in_the_same_step(store: FlowStore) -> None:
    flow = store.create(FLOW_ID, "LinkedIn", "profile", None, None)
    listener = store.redis.pubsub()
    listener.subscribe("/0.celeryev/task.sent")
    listener.get_message(timeout=1)
    assert store.claim_callback(flow, TOKEN, queue=_queued()).done
    assert store.redis.lrange("q.celery", 0, -1) == [f"message for {FLOW_ID}".encode()]
    assert listener.get_message(timeout=1)["data"] == b"sent event"


def test_a_refused_step_queues_nothing(store: FlowStore) -> None:
    flow = store.create(FLOW_ID, "LinkedIn", "profile", None, None)
    other = store.create("cd" * 20, "LinkedIn", "profile", None, None)
    assert store.claim_callback(other, TOKEN).done  # the token belongs to another flow now
    assert store.claim_callback(flow, TOKEN, queue=_queued()).outcome is TransitionOutcome.TOKEN_IN_USE
    assert store.claim_callback(other, TOKEN, queue=_queued()).outcome is TransitionOutcome.CONFLICT  # again
    assert store.redis.llen("q.celery") == 0


def test_a_selection_queues_the_completion_with_its_step(store: FlowStore) -> None:
    flow = store.create(FLOW_ID, "Facebook", "page", None, None)
    store.claim_callback(flow, TOKEN)
    verifying = store.get(FLOW_ID)
    assert verifying is not None
    store.take_work(FLOW_ID, "task-a", FlowState.VERIFYING)
    assert store.offer_selection(verifying, [], "task-a").done
    waiting = store.get(FLOW_ID)
    assert waiting is not None
    assert store.submit_selection(waiting, ["1"], queue=_queued("c.celery")).done
    assert store.redis.llen("c.celery") == 1
    assert (
        store.submit_selection(waiting, ["1"], queue=_queued("c.celery")).outcome
        is TransitionOutcome.CONFLICT
    )
    assert store.redis.llen("c.celery") == 1


@pytest.mark.integration
def test_a_worker_runs_the_task_that_a_claim_queued(broker: tuple[Celery, redis.Redis, str]) -> None:
    """The prepared message as a real Celery consumer reads it: kombu decodes it into our task call."""
    app, client, queue = broker
    store = FlowStore(client, RedisNames(f"t{uuid.uuid4().hex[:6]}"), Lifetimes())
    flow = store.create(uuid.uuid4().hex, "LinkedIn", "profile", None, None)
    prepared = Enqueuer(app, app.conf.broker_url, versions=AS_TESTED).prepared(
        flow.flow_id, FlowState.VERIFYING
    )
    assert store.claim_callback(flow, TOKEN, queue=prepared).done
    with app.connection_for_read() as connection:
        simple = connection.SimpleQueue(queue)
        deadline = time.monotonic() + 5
        message = simple.get(timeout=max(0.1, deadline - time.monotonic()))
        assert message.headers["task"] == VERIFY_TASK
        args, kwargs, _embed = message.decode()
        assert args == [flow.flow_id]
        assert kwargs == {}
        message.ack()
        simple.close()


def test_only_a_first_message_with_its_sent_event_needs_a_word_with_the_broker() -> None:
    """The events' channel is read off the broker once: until then the shim reads a flow before claiming
    it (a stalled Redis then answers a quick 503, not a wait for the broker's connection)."""
    app = _app("redis://127.0.0.1:1/0", "never.celery")  # never connected to
    enqueuer = Enqueuer(app, app.conf.broker_url, versions=AS_TESTED)
    assert enqueuer.prepares
    assert not enqueuer.prepares_without_redis
    app.conf.task_send_sent_event = False
    assert enqueuer.prepares_without_redis
    elsewhere = Enqueuer(
        _app("redis://127.0.0.1:1/0", "q"), "redis://flows.example:6379/0", versions=AS_TESTED
    )
    assert elsewhere.prepares_without_redis  # prepares nothing: apply_async after the transition


@pytest.mark.integration
def test_once_a_message_was_prepared_the_next_needs_no_broker(
    broker: tuple[Celery, redis.Redis, str],
) -> None:
    app, _, _ = broker
    enqueuer = Enqueuer(app, app.conf.broker_url, versions=AS_TESTED)
    assert not enqueuer.prepares_without_redis
    assert enqueuer.prepared(FLOW_ID, FlowState.VERIFYING) is not None
    assert enqueuer.prepares_without_redis


@pytest.mark.integration
@pytest.mark.parametrize("state", [FlowState.VERIFYING, FlowState.COMPLETING])
def test_celery_builds_a_tasks_message_once_and_each_flows_is_filled_in_as_celery_builds_it(
    broker: tuple[Celery, redis.Redis, str], state: FlowState, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _, _ = broker
    enqueuer = Enqueuer(app, app.conf.broker_url, versions=AS_TESTED)
    built, values = _counting_builds(app, monkeypatch), _recording_values(monkeypatch)
    flows = [f"{index:040x}" for index in range(3)]

    prepared = [enqueuer.prepared(flow_id, state) for flow_id in flows]

    assert built == [task_for(state)] * 2  # the template's, and the sample that checked it
    messages = TaskMessages(app)
    made_for = {value.flow_id: value for value in values}  # and the template's sample
    for flow_id, message in zip(flows, prepared, strict=True):
        value = made_for[flow_id]
        assert message == messages.built(task_for(state), value)  # the very text Celery builds
        assert message is not None
        assert json.loads(base64.b64decode(json.loads(message.message)["body"]))[0] == [flow_id]
    assert len({message.task_id for message in prepared if message is not None}) == 3


@pytest.mark.integration
def test_a_template_that_would_not_fill_in_what_celery_builds_is_not_used(
    broker: tuple[Celery, redis.Redis, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Celery release whose messages carry one more value of their own: each is built by Celery."""
    app, _, _ = broker
    serial = iter(range(100))
    create = app.amqp.create_task_message

    def with_a_serial(*args: Any, **kwargs: Any) -> Any:
        headers, properties, body, sent_event = create(*args, **kwargs)
        return {**headers, "serial": next(serial)}, properties, body, sent_event

    monkeypatch.setattr(app.amqp, "create_task_message", with_a_serial)
    enqueuer = Enqueuer(app, app.conf.broker_url, versions=AS_TESTED)

    serials = []
    for _ in range(3):
        prepared = enqueuer.prepared(FLOW_ID, FlowState.VERIFYING)
        assert prepared is not None
        serials.append(json.loads(prepared.message)["headers"]["serial"])

    assert serials == [2, 3, 4]  # after the template's two builds, each message built by Celery
    assert "built by Celery each time" in caplog.text


def test_a_flow_id_of_another_shape_is_built_by_celery(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app("redis://127.0.0.1:1/0", "quiet.celery")
    app.conf.task_send_sent_event = False
    built = _counting_builds(app, monkeypatch)
    enqueuer = Enqueuer(app, app.conf.broker_url, versions=AS_TESTED)

    prepared = enqueuer.prepared("a'b", FlowState.VERIFYING)

    assert built == [VERIFY_TASK]
    assert prepared is not None
    assert json.loads(prepared.message)["headers"]["argsrepr"] == saferepr(["a'b"])  # not repr's


def _counting_builds(app: Celery, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The task names Celery builds a message for, from now on."""
    names: list[str] = []
    create = app.amqp.create_task_message

    def counted(task_id: str, name: str, *args: Any, **kwargs: Any) -> Any:
        names.append(name)
        return create(task_id, name, *args, **kwargs)

    monkeypatch.setattr(app.amqp, "create_task_message", counted)
    return names


def _recording_values(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The values each message is made with, from now on."""
    made: list[Any] = []
    new = enqueuer_module._Values.new

    def recorded(app: Celery, flow_id: str) -> Any:
        values = new(app, flow_id)
        made.append(values)
        return values

    monkeypatch.setattr(enqueuer_module._Values, "new", recorded)
    return made
