"""The connection deletion task tries again for as long as Oktopost keeps failing (a minute apart at
most), not Celery's default of three retries, after which the deletion waited for the sweep's re-queue."""

from __future__ import annotations

import pytest

from worker.connections.deletion import Deletion
from worker.oktopost.errors import ServerError
from worker.tasks import celery_tasks, runtime
from worker.upstream.budget import NoBudgetInTime


class Flaky:
    """A deleter whose first `faults` deletions fail transiently, one way or the other."""

    def __init__(self, faults: int) -> None:
        self.faults = faults
        self.calls = 0

    def delete(self, _tenant: str, _connection_id: str) -> Deletion:
        self.calls += 1
        if self.calls <= self.faults:
            raise ServerError(503) if self.calls % 2 else NoBudgetInTime(1.0)
        return Deletion.DELETED


def test_a_deletion_is_tried_again_past_celerys_default_of_three_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deleter = Flaky(faults=8)
    monkeypatch.setattr(runtime, "connection_deleter", lambda: deleter)
    result = celery_tasks.delete_connection.apply(args=["default", "003-1"])  # retries run at once
    assert result.get() == "deleted"
    assert deleter.calls == 9


def test_the_wait_between_a_deletions_tries_doubles_up_to_a_minute() -> None:
    waits = [celery_tasks.deletion_retry_delay(retries) for retries in range(9)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
