"""Which task events the flow tasks send (worker.tasks.celery_tasks, through worker.observing.task_events),
in this process: Celery's own are off for them only; a run is framed by task-started and task-succeeded
with its outcome, or task-failed when it raises; a received flow task has its task-received, another
task none from us. What reaches the broker and Flower: tests/pipeline/test_task_events.py and
tests/operate/test_flower.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from worker.queueing.names import DELIVER_TASK, FLOW_TASKS, VERIFY_TASK
from worker.tasks import celery_tasks
from worker.tasks.celery_app import app
from worker.tasks.work import TaskOutcome


class Recorded(celery_tasks.TaskEvents):
    """Events kept in a list instead of published."""

    def __init__(self) -> None:
        super().__init__(app, "flows@test-host")
        self.sent: list[dict[str, Any]] = []

    def _send(self, type_: str, **fields: Any) -> None:
        self.sent.append({"type": type_, **fields})


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    events = Recorded()
    monkeypatch.setattr(celery_tasks, "_events", events)
    monkeypatch.setattr(celery_tasks, "_handed_back", lambda _flow_id, _early: None)
    monkeypatch.setattr(celery_tasks.runtime, "task_context", lambda: "context")
    return events


def a_task(task_id: str) -> Any:
    return SimpleNamespace(request=SimpleNamespace(id=task_id, hostname="flows@test-host"))


def test_celerys_own_task_events_are_off_for_the_flow_tasks_only() -> None:
    assert app.tasks[VERIFY_TASK].send_events is False
    assert app.tasks["oktopost.complete"].send_events is False
    assert app.tasks[DELIVER_TASK].send_events is True
    assert app.conf.worker_send_task_events is True  # the other tasks' and the workers' heartbeats


def test_the_flow_tasks_are_the_tasks_named_flow_tasks() -> None:
    """The broker's in-memory tracking and the logs' flow ids go by FLOW_TASKS, the tasks' own code by
    the state each works on: a third flow task must be named in both."""
    assert set(celery_tasks._WORKS_ON) == FLOW_TASKS
    assert all(app.tasks[name].send_events is False for name in FLOW_TASKS)


def test_a_run_is_framed_by_started_and_succeeded_with_its_outcome(recorded: Recorded) -> None:
    outcome = celery_tasks._flow_task(
        a_task("t-1"), "f-1", lambda _context, _flow_id, _early: TaskOutcome.COMPLETED
    )
    assert outcome == "completed"
    assert [event["type"] for event in recorded.sent] == ["task-started", "task-succeeded"]
    assert {event["uuid"] for event in recorded.sent} == {"t-1"}
    assert recorded.sent[1]["result"] == "'completed'"
    assert 0 <= recorded.sent[1]["runtime"] < 5


def test_a_run_that_raises_ends_with_task_failed_and_raises(recorded: Recorded) -> None:
    def broken(_context: object, _flow_id: str, _early: object) -> TaskOutcome:
        raise RuntimeError("the store went away")

    with pytest.raises(RuntimeError):
        celery_tasks._flow_task(a_task("t-2"), "f-2", broken)
    assert [event["type"] for event in recorded.sent] == ["task-started", "task-failed"]
    assert recorded.sent[1]["exception"] == "RuntimeError('the store went away')"
    assert "broken" in recorded.sent[1]["traceback"]


def test_a_received_flow_task_has_its_task_received_and_another_task_none(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected: list[tuple[str, str]] = []
    leases = SimpleNamespace(expect=lambda flow_id, owner: expected.append((flow_id, owner)))
    monkeypatch.setattr(celery_tasks, "_starts_at_once", lambda _consumer, _request: False)
    monkeypatch.setattr(celery_tasks.runtime, "task_context", lambda: SimpleNamespace(leases=leases))
    received = SimpleNamespace(
        id="t-3",
        name=VERIFY_TASK,
        args=["f-3"],
        argsrepr="['f-3']",
        kwargsrepr="{}",
        root_id="t-3",
        parent_id=None,
        eta=None,
        expires=None,
        request_dict={"retries": 0},
        hostname="flows@test-host",
    )
    celery_tasks._hold_received_flow(request=received)
    celery_tasks._hold_received_flow(request=SimpleNamespace(id="t-4", name=DELIVER_TASK, args=["d-1"]))
    assert [(event["type"], event["uuid"]) for event in recorded.sent] == [("task-received", "t-3")]
    assert recorded.sent[0]["args"] == "['f-3']"
    assert expected == [("f-3", "")]  # its flow is held as received, as before
