"""On Celery or kombu releases the tests do not cover, nothing reaches into their internals: tasks are
sent with plain apply_async after each step and kombu's transport is left alone, each said once."""

from __future__ import annotations

import logging
import re
import tomllib
import uuid
from pathlib import Path

import pytest
from celery import Celery
from kombu.transport import redis as kombu_redis

import worker.tasks.celery_tasks  # noqa: F401 - defines our tasks, which every Celery app shares
from worker.flows.enqueuer import COMPLETE_TASK, VERIFY_TASK, Enqueuer
from worker.flows.flow import FlowState
from worker.queueing.broker import repair_redis_transport
from worker.queueing.versions import TESTED_RANGES, LibraryVersions

FLOW_ID = "cd" * 20
TESTED = LibraryVersions(celery="5.7.0", kombu="5.7.0")
NEWER_CELERY = LibraryVersions(celery="5.8.1", kombu="5.7.0")
OLDER_KOMBU = LibraryVersions(celery="5.7.0", kombu="5.3.4")


def test_versions_outside_the_tested_minors_are_named() -> None:
    assert TESTED.tested
    assert TESTED.untested() == []
    assert LibraryVersions(celery="5.7.12", kombu="5.7.0rc2").tested
    assert NEWER_CELERY.untested() == ["celery 5.8.1"]
    assert OLDER_KOMBU.untested() == ["kombu 5.3.4"]
    assert LibraryVersions(celery="6.0.0", kombu="unknown").untested() == ["celery 6.0.0", "kombu unknown"]


def test_the_tested_ranges_are_the_bounds_pyproject_declares() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    declared = {}
    for requirement in pyproject["project"]["dependencies"]:
        match = re.fullmatch(r"(celery|kombu)(?:\[\w+\])?>=(\d+)\.(\d+),<(\d+)\.(\d+)", requirement)
        if match:
            lowest, beyond = match.groups()[1:3], match.groups()[3:5]
            declared[match.group(1)] = (tuple(map(int, lowest)), tuple(map(int, beyond)))
    assert declared == TESTED_RANGES


@pytest.mark.parametrize("versions", [NEWER_CELERY, OLDER_KOMBU])
def test_untested_releases_queue_tasks_with_apply_async_after_the_step_and_warn_once(
    versions: LibraryVersions, caplog: pytest.LogCaptureFixture
) -> None:
    app = Celery("fallback-test", broker="memory://", set_as_current=False)
    app.conf.task_default_queue = queue = f"fallback-{uuid.uuid4().hex[:8]}"  # kombu's memory is per process
    with caplog.at_level(logging.WARNING, logger="worker.flows.enqueuer"):
        enqueuer = Enqueuer(app, "memory://", versions=versions)  # the broker is the flows' Redis
        for state in (FlowState.VERIFYING, FlowState.COMPLETING):
            prepared = enqueuer.prepared(FLOW_ID, state)
            assert prepared is None
            enqueuer.after_transition(True, FLOW_ID, state, prepared)
        enqueuer.after_transition(False, FLOW_ID, FlowState.VERIFYING, None)  # a refused step sends nothing

    warnings = [record.getMessage() for record in caplog.records if record.name == "worker.flows.enqueuer"]
    assert len(warnings) == 1
    assert " ".join(versions.untested()) in warnings[0]
    assert "apply_async" in warnings[0]
    with app.connection_for_read() as connection:
        sent = connection.SimpleQueue(queue)
        messages = [sent.get(timeout=1) for _ in range(2)]
        assert [message.headers["task"] for message in messages] == [VERIFY_TASK, COMPLETE_TASK]
        assert all(message.decode()[0] == [FLOW_ID] for message in messages)
        for message in messages:
            message.ack()
        assert sent.qsize() == 0
        sent.close()
    app.close()


def test_on_tested_releases_the_step_pushes_the_task_itself() -> None:
    app = Celery("prepared-test", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.task_send_sent_event = False  # nothing to ask the (absent) broker
    prepared = Enqueuer(app, "redis://127.0.0.1:1/0", versions=TESTED).prepared(FLOW_ID, FlowState.VERIFYING)
    assert prepared is not None
    assert prepared.queue == app.conf.task_default_queue


def test_untested_releases_leave_kombus_transport_as_it_ships(caplog: pytest.LogCaptureFixture) -> None:
    before = (kombu_redis.Channel._connparams, kombu_redis.Channel._create_client)
    with caplog.at_level(logging.WARNING, logger="worker.queueing.broker"):
        assert repair_redis_transport(NEWER_CELERY) is False
    assert (kombu_redis.Channel._connparams, kombu_redis.Channel._create_client) == before
    warnings = [record.getMessage() for record in caplog.records if record.name == "worker.queueing.broker"]
    assert len(warnings) == 1
    assert "celery 5.8.1" in warnings[0]
    assert "transport" in warnings[0]
    assert repair_redis_transport(TESTED) is True
