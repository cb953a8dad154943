"""The Celery tasks. They carry a flow id only: the token stays in Redis, out of the broker and Flower."""

from __future__ import annotations

from celery.signals import worker_ready, worker_shutdown

from worker import runtime, steps
from worker.celery_app import app
from worker.flows import FlowState
from worker.logs import flow_context
from worker.sweeper import Sweeper


@app.task(name="oktopost.verify", acks_late=True, reject_on_worker_lost=True)
def verify(flow_id: str) -> str:
    with flow_context(flow_id):
        return steps.verify_flow(runtime.worker(), flow_id).value


@app.task(name="oktopost.complete", acks_late=True, reject_on_worker_lost=True)
def complete(flow_id: str) -> str:
    with flow_context(flow_id):
        return steps.complete_flow(runtime.worker(), flow_id).value


def enqueue(flow_id: str, state: FlowState) -> None:
    """Queues the task that works on a flow in this state."""
    task = complete if state is FlowState.COMPLETING else verify
    task.apply_async(args=[flow_id])


_sweeper: Sweeper | None = None


@worker_ready.connect
def _start_sweeper(**_: object) -> None:
    global _sweeper
    _sweeper = Sweeper(runtime.store(), enqueue)
    _sweeper.start()


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    if _sweeper is not None:
        _sweeper.stop()
