"""The Celery app: configured from celeryconfig.py, its tasks in worker.tasks.celery_tasks.

Importing those tasks connects the worker_ready handler that starts a worker's three background threads
(the sweeper, the unparker and the webhook dispatcher).

`celery -A worker worker` and `oktopost-connect worker` start the same worker: the pool and its
concurrency come from the configuration, logging is ours on either path (each task's flow id, secrets
redacted, LOG_FORMAT), and gossip and mingle are off on either path.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from celery import Celery, Task, signals
from celery.apps.worker import Worker
from celery.worker.request import Request

from worker.observing.redaction import redact
from worker.queueing import stats as _stats  # noqa: F401 - registers the worker's `stats` without secrets


class _Worker(Worker):
    def prepare_args(self, **kwargs: Any) -> dict[str, Any]:
        # Mingle asks the other workers for revoked tasks and clocks at start-up, and gossip follows
        # every other worker's events: neither is used here (tasks are idempotent by their flow's
        # lease), both cost a start-up wait and a stream of broadcasts on Redis.
        return {**super().prepare_args(**kwargs), "without_gossip": True, "without_mingle": True}


class RedactedRequest(Request):
    """A task's run in the worker whose task-failed and task-retried events carry its exception and
    traceback with tokens, Authorization values and registered secrets masked, as the logs do: Flower
    shows both. (The flow tasks send their own events, masked the same way: worker.observing.task_events.)"""

    def send_event(self, type: str, **fields: Any) -> None:
        for name in ("exception", "traceback"):
            if isinstance(fields.get(name), str):
                fields[name] = redact(fields[name])
        super().send_event(type, **fields)


class ConnectTask(Task):
    Request = RedactedRequest


class ConnectCelery(Celery):
    @cached_property
    def Worker(self) -> type[Worker]:
        return self.subclass_with_self(_Worker)


app = ConnectCelery("oktopost_connect", include=["worker.tasks.celery_tasks"], task_cls=ConnectTask)
app.config_from_object("celeryconfig")


@signals.worker_init.connect
def _start_traces(**_: object) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT, the worker exports traces (worker.observing.tracing): a span for
    each task, in its flow's trace, and for each Oktopost call. Without it, nothing of OpenTelemetry loads."""
    from worker.observing import tracing

    if tracing.start("oktopost-connect-worker"):
        tracing.instrument_celery()


@signals.setup_logging.connect
def _configure_logging(**_: object) -> None:
    """Celery leaves logging to us when this signal has a receiver, whichever command started it."""
    from worker.config.settings import get_settings
    from worker.observing.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
