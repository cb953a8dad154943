"""The Celery tasks. They carry a flow id only: the token stays in Redis, out of the broker and Flower."""

from __future__ import annotations

import socket
from functools import lru_cache

from celery.signals import worker_ready, worker_shutdown

from worker import runtime, work
from worker.celery_app import app
from worker.flow import FlowState
from worker.logs import flow_context
from worker.queueing import COMPLETE_TASK, VERIFY_TASK, TaskMessages, task_for
from worker.store import QueuedTask
from worker.sweeper import Sweeper


@app.task(name=VERIFY_TASK, acks_late=True, reject_on_worker_lost=True)
def verify(flow_id: str) -> str:
    with flow_context(flow_id):
        return work.verify_flow(runtime.task_context(), flow_id).value


@app.task(name=COMPLETE_TASK, acks_late=True, reject_on_worker_lost=True)
def complete(flow_id: str) -> str:
    with flow_context(flow_id):
        return work.complete_flow(runtime.task_context(), flow_id).value


def enqueue(flow_id: str, state: FlowState) -> None:
    """Queues the task that works on a flow in this state."""
    app.tasks[task_for(state)].apply_async(args=[flow_id])


@lru_cache(maxsize=1)
def _messages() -> TaskMessages:
    return TaskMessages(app)


def queued_with_step(flow_id: str, state: FlowState, redis_url: str) -> QueuedTask | None:
    """The message of the task for a flow in this state, for the flow store's step to push itself.

    None when the broker is not the flows' Redis (CELERY_BROKER_URL set apart from REDIS_URL): a Lua
    script reaches one Redis only, so the caller then enqueues after the step, with `enqueue`.
    """
    if app.conf.broker_url != redis_url:
        return None
    return _messages().prepare(task_for(state), flow_id)


_sweeper: Sweeper | None = None


@worker_ready.connect
def _start_sweeper(sender: object = None, **_: object) -> None:
    global _sweeper
    name = str(getattr(sender, "hostname", "") or socket.gethostname())
    _sweeper = Sweeper(runtime.store(), enqueue, name=name)
    _sweeper.start()


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    if _sweeper is not None:
        _sweeper.stop()
