"""The Celery tasks. They carry a flow id only: the token stays in Redis, out of the broker and Flower."""

from __future__ import annotations

import socket

from celery.signals import worker_ready, worker_shutdown

from worker import runtime, work
from worker.celery_app import app
from worker.logs import flow_context
from worker.parking import Unparker
from worker.queueing import COMPLETE_TASK, VERIFY_TASK, Enqueuer
from worker.settings import get_settings
from worker.sweeper import Sweeper


@app.task(name=VERIFY_TASK, acks_late=True, reject_on_worker_lost=True)
def verify(flow_id: str) -> str:
    with flow_context(flow_id):
        return _ran(work.verify_flow(runtime.task_context(), flow_id))


@app.task(name=COMPLETE_TASK, acks_late=True, reject_on_worker_lost=True)
def complete(flow_id: str) -> str:
    with flow_context(flow_id):
        return _ran(work.complete_flow(runtime.task_context(), flow_id))


def _ran(outcome: work.TaskOutcome) -> str:
    if outcome is work.TaskOutcome.PARKED and _unparker is not None:
        _unparker.wake()  # the flow's account may be due before the unparker's next look
    return outcome.value


def enqueuer(redis_url: str) -> Enqueuer:
    """The Enqueuer of these tasks, for a process whose flows live at `redis_url`."""
    return Enqueuer(app, redis_url)


# A released flow's reserved slot counts as a call in flight for its task's start and its call: a task
# that starts later still finds it until a period after that (then it asks the budget again), and one
# that never starts (its flow ended meanwhile) holds the slot no longer than this and a period.
RELEASED_START_SECONDS = 5.0

_sweeper: Sweeper | None = None
_unparker: Unparker | None = None


@worker_ready.connect
def _start_sweeper(sender: object = None, **_: object) -> None:
    global _sweeper, _unparker
    name = str(getattr(sender, "hostname", "") or socket.gethostname())
    settings, store = get_settings(), runtime.store()
    budgets = {budget.names.parked_flows: budget for budget in runtime.upstreams().budgets()}
    tasks = enqueuer(settings.redis_url)
    _sweeper = Sweeper(store, tasks, name=name, accounts=[budget.account for budget in budgets.values()])
    _sweeper.start()
    policy = runtime.retry_policy(settings)
    _unparker = Unparker(
        store,
        tasks,
        budgets.get,
        hold=RELEASED_START_SECONDS + policy.max_attempt_seconds + 1,
        least_seconds=policy.min_attempt_seconds,
    )
    _unparker.start()


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    if _unparker is not None:
        _unparker.stop()
    if _sweeper is not None:
        _sweeper.stop()
    if runtime.task_context.cache_info().currsize:  # tasks ran here: their heartbeat stops too
        runtime.task_context().leases.stop()
