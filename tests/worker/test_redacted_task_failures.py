"""Celery's own task events of our tasks (webhook deliveries, connection deletions; the flow tasks send
theirs themselves, tests/worker/test_flow_task_events.py): a task-failed or task-retried event carries
the exception and the traceback with tokens, Authorization values and registered secrets masked, as the
logs do, since Flower shows both; the other events go out as Celery sends them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from celery.utils.imports import symbol_by_name

from worker.observing.redaction import MASK
from worker.queueing.names import COMPLETE_TASK, DELETE_CONNECTION_TASK, DELIVER_TASK, VERIFY_TASK
from worker.tasks import celery_tasks
from worker.tasks.celery_app import RedactedRequest, app

TOKEN = "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"


class Eventer:
    enabled = True

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, type_: str, **fields: Any) -> None:
        self.sent.append({"type": type_, **fields})


def a_request(eventer: Eventer) -> RedactedRequest:
    """A worker's request of a delivery task, with only what sending an event reads."""
    request = RedactedRequest.__new__(RedactedRequest)
    request._eventer = eventer
    request._task = SimpleNamespace(send_events=True)
    request.id = "t-1"
    return request


def test_every_task_of_the_app_runs_with_the_redacted_request() -> None:
    assert celery_tasks.deliver.name == DELIVER_TASK  # the tasks are registered
    for name in (VERIFY_TASK, COMPLETE_TASK, DELIVER_TASK, DELETE_CONNECTION_TASK):
        assert symbol_by_name(app.tasks[name].Request) is RedactedRequest


def test_a_failure_and_a_retry_show_their_exception_and_traceback_masked() -> None:
    eventer = Eventer()
    request = a_request(eventer)
    leaked = f"ConnectError('GET https://api.test/v2/social-authorization/{TOKEN}')"
    header = "headers: Authorization: Basic YWJjOmRlZg=="
    traceback = f'Traceback (most recent call last):\n  File "x.py"\n{header}\n{leaked}'
    request.send_event("task-failed", exception=leaked, traceback=traceback)
    request.send_event("task-retried", exception=leaked, traceback=traceback)
    for event in eventer.sent:
        assert event["uuid"] == "t-1"
        assert TOKEN not in event["exception"]
        assert TOKEN not in event["traceback"]
        assert "YWJjOmRlZg==" not in event["traceback"]
        assert MASK in event["exception"]
        assert event["exception"].startswith("ConnectError('GET https://api.test/v2/social-authorization/")


def test_other_events_go_out_as_celery_sends_them() -> None:
    eventer = Eventer()
    a_request(eventer).send_event("task-succeeded", result="'delivered'", runtime=0.01)
    assert eventer.sent == [
        {"type": "task-succeeded", "uuid": "t-1", "result": "'delivered'", "runtime": 0.01}
    ]
