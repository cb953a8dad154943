"""The flow tasks' own task events (worker.observing.task_events), on a real redis-server as the broker:
they reach the event exchange as Celery's buffered group does ("task.multi", a list), with the fields
Celery gives each type, gathered into one publish per batch; Celery's own state machine (what Flower
keeps) makes a finished task of them; a failed task's event carries its exception and traceback, any
token masked; a broker that is away costs the events, never the task. The whole path, a real worker
seen by a real Flower: tests/operate/test_flower.py."""

from __future__ import annotations

import base64
import datetime
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from celery import Celery
from celery.events.state import State
from celery.utils.time import utcoffset

from tests.support.flows import callback, consent, events_of, start_flow
from tests.support.processes import free_port
from tests.support.receivers import wait_until
from tests.support.stack import RedisServer, start_pipeline, start_sandbox
from worker.observing.task_events import TaskEvents

pytestmark = pytest.mark.integration

HOST = "flows@test-host"
FLOWS_IN_A_ROW = 8


@dataclass
class Received:
    """The fields of a worker's Request that task-received reads."""

    id: str
    name: str = "oktopost.verify"
    argsrepr: str = "['f-1']"
    kwargsrepr: str = "{}"
    root_id: str = ""
    parent_id: str | None = None
    eta: datetime.datetime | None = None
    expires: datetime.datetime | None = None
    request_dict: dict[str, Any] = field(default_factory=lambda: {"retries": 0})


@pytest.fixture
def broker(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    return redis_server.url


class Published:
    """The messages published on the event exchange's task.multi channel, each as its list of events."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._listener = self._client.pubsub(ignore_subscribe_messages=True)
        self._listener.psubscribe("*celeryev/task.multi")
        self._messages: list[list[dict[str, Any]]] = []

    def messages(self) -> list[list[dict[str, Any]]]:
        while (message := self._listener.get_message(timeout=0.05)) is not None:
            envelope = json.loads(message["data"])
            assert envelope["properties"]["delivery_info"]["routing_key"] == "task.multi"
            assert envelope["headers"] == {"hostname": HOST}
            self._messages.append(json.loads(base64.b64decode(envelope["body"])))
        return self._messages

    def wait_for(self, count: int, timeout: float = 3.0) -> list[list[dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while len(self.messages()) < count:
            assert time.monotonic() < deadline, f"{count} message(s) within {timeout}s: {self._messages}"
            time.sleep(0.02)
        return self._messages

    def close(self) -> None:
        self._listener.close()
        self._client.close()


@pytest.fixture
def published(broker: str) -> Iterator[Published]:
    listening = Published(broker)
    yield listening
    listening.close()


def app_for(url: str) -> Celery:
    return Celery("task-events-test", broker=url)


def test_a_task_events_reach_the_exchange_together_with_celerys_fields(
    broker: str, published: Published
) -> None:
    events = TaskEvents(app_for(broker), HOST, batch_seconds=0.2)
    try:
        events.received(Received("t-1", root_id="t-1"))
        events.started("t-1")
        events.succeeded("t-1", "completed", 0.0123)
        published.wait_for(1)
        time.sleep(0.3)
        assert len(published.messages()) == 1  # one publish for the three, gathered within the batch
    finally:
        events.close()
    batch = published.messages()[0]
    received, started, succeeded = batch
    assert [e["type"] for e in batch] == ["task-received", "task-started", "task-succeeded"]
    for event in batch:
        assert event["uuid"] == "t-1"
        assert event["hostname"] == HOST
        assert isinstance(event["pid"], int)
        assert event["utcoffset"] == utcoffset()  # the local time's offset in hours, as Celery's
        assert abs(event["timestamp"] - time.time()) < 5
    assert received["clock"] < started["clock"] < succeeded["clock"]
    assert received["name"] == "oktopost.verify"
    assert received["args"] == "['f-1']"
    assert received["kwargs"] == "{}"
    assert received["root_id"] == "t-1"
    assert received["retries"] == 0
    assert received["eta"] is None
    assert received["expires"] is None
    assert succeeded["result"] == "'completed'"  # the result's repr, as Celery's
    assert succeeded["runtime"] == 0.0123


def test_celerys_state_makes_a_finished_task_of_them(broker: str, published: Published) -> None:
    events = TaskEvents(app_for(broker), HOST, batch_seconds=0.05)
    try:
        events.received(Received("t-2"))
        events.started("t-2")
        events.succeeded("t-2", "completed", 0.5)
        published.wait_for(1)
    finally:
        events.close()
    state = State()
    for message in published.messages():
        for event in message:
            state.event(dict(event, local_received=time.time()))
    task = state.tasks["t-2"]
    assert task.state == "SUCCESS"
    assert task.name == "oktopost.verify"
    assert task.args == "['f-1']"
    assert task.worker.hostname == HOST
    assert task.received
    assert task.started
    assert task.succeeded
    assert task.result == "'completed'"


def test_a_failed_task_carries_its_exception_and_traceback(broker: str, published: Published) -> None:
    events = TaskEvents(app_for(broker), HOST, batch_seconds=0.05)
    try:
        events.started("t-3")
        try:
            refuse_the_selection()
        except ValueError as error:
            events.failed("t-3", error)
        published.wait_for(1)
    finally:
        events.close()
    failed = [e for message in published.messages() for e in message if e["type"] == "task-failed"]
    assert len(failed) == 1
    assert failed[0]["exception"] == "ValueError('no entity at /v2/social-authorization/***')"
    assert "refuse_the_selection" in failed[0]["traceback"]
    assert TOKEN not in json.dumps(failed)  # masked in the exception and in the traceback


TOKEN = "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"


def refuse_the_selection() -> None:
    raise ValueError(f"no entity at /v2/social-authorization/{TOKEN}")


def test_batches_of_several_tasks_go_out_in_one_publish(broker: str, published: Published) -> None:
    events = TaskEvents(app_for(broker), HOST, batch_seconds=0.2)
    try:
        for index in range(20):
            events.received(Received(f"t-{index}"))
        published.wait_for(1)
        time.sleep(0.3)
        assert [len(message) for message in published.messages()] == [20]
    finally:
        events.close()


class CountedEvent(threading.Event):
    """A threading.Event that counts the times it is set: the wakes of TaskEvents' thread."""

    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


def test_events_in_a_row_wake_the_thread_once_then_it_rests(broker: str, published: Published) -> None:
    events = TaskEvents(app_for(broker), HOST, batch_seconds=0.2)
    wakes = events._due = CountedEvent()
    try:
        for index in range(30):  # a flow every 20 ms, three events each, through three batches
            events.received(Received(f"t-{index}"))
            events.started(f"t-{index}")
            events.succeeded(f"t-{index}", "completed", 0.001)
            time.sleep(0.02)
        assert wakes.sets == 1  # woken by the first, then looking by itself: the rest woke nothing
        published.wait_for(1)
        time.sleep(0.6)  # a look published the last ones, the next found nothing: the thread rests
        assert sum(len(message) for message in published.messages()) == 90
        assert len(published.messages()) >= 3  # published a batch at a time, not all at the end
        events.started("t-late")  # the next event wakes it, and reaches the exchange in its batch
        assert wakes.sets == 2
        wait_until(
            lambda: sum(len(message) for message in published.messages()) == 91,
            2,
            "the event after a rest was not published",
        )
    finally:
        events.close()


def test_close_publishes_what_is_left_at_once(broker: str, published: Published) -> None:
    events = TaskEvents(app_for(broker), HOST, batch_seconds=30)
    events.started("t-4")
    started = time.monotonic()
    events.close()
    assert time.monotonic() - started < 5  # not the batch's 30 seconds
    assert [e["type"] for e in published.wait_for(1)[0]] == ["task-started"]


def test_a_broker_away_costs_the_events_not_the_task(caplog: pytest.LogCaptureFixture) -> None:
    nowhere = app_for(f"redis://127.0.0.1:{free_port()}/0")
    nowhere.conf.broker_transport_options = {"max_retries": 1, "interval_start": 0, "interval_step": 0}
    away = TaskEvents(nowhere, HOST, batch_seconds=0.05)
    with caplog.at_level(logging.WARNING, logger="worker.observing.task_events"):
        away.started("t-5")  # never raises
        away.flush()
        away.started("t-6")
        away.flush()
        away.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once for the outage, not once a batch
    assert "not published" in warnings[0]


def test_a_worker_at_its_prefetch_limit_takes_the_next_task_at_once(redis_server: RedisServer) -> None:
    """One thread (so it prefetches one task): each flow's task is taken as soon as the one before is
    acknowledged, though Celery's own task events, which woke the worker's consumer loop as each task
    ended, are off for the flow tasks: that loop reads the broker again without them."""
    with ExitStack() as started:
        sandbox = start_sandbox()
        started.callback(sandbox.process.stop)
        pipeline = start_pipeline(redis_server.url, sandbox.url, workers=0)
        started.callback(pipeline.stop)
        pipeline.start_worker(concurrency=1)
        warm = start_flow(pipeline)
        assert callback(consent(warm["redirect_url"])).status_code == 303
        assert events_of(pipeline, warm["flow_id"])[-1]["type"] == "connection.completed"

        flows = [start_flow(pipeline) for _ in range(FLOWS_IN_A_ROW)]
        callbacks = [consent(flow["redirect_url"]) for flow in flows]
        began = time.monotonic()
        for url in callbacks:
            assert callback(url).status_code == 303
        for flow in flows:
            assert events_of(pipeline, flow["flow_id"])[-1]["type"] == "connection.completed"
        took = time.monotonic() - began
    assert took < FLOWS_IN_A_ROW * 0.25, f"{FLOWS_IN_A_ROW} flows one after the other took {took:.2f}s"


def test_a_real_worker_sends_a_free_threads_take_at_the_tasks_receipt(redis_server: RedisServer) -> None:
    """The early take (worker.tasks.work.EarlyTake) in a real worker: its threads pool runs the task in
    the process that received it, so the take goes out with the receipt, and the flow completes."""
    with ExitStack() as started:
        sandbox = start_sandbox()
        started.callback(sandbox.process.stop)
        pipeline = start_pipeline(redis_server.url, sandbox.url, workers=0, log_level="DEBUG")
        started.callback(pipeline.stop)
        worker = pipeline.start_worker(concurrency=2)
        flow = start_flow(pipeline)
        assert callback(consent(flow["redirect_url"])).status_code == 303
        assert events_of(pipeline, flow["flow_id"])[-1]["type"] == "connection.completed"
        log = worker.log_path.read_text(errors="replace")
    assert f"flow {flow['flow_id']}: its take sent at the task's receipt" in log
