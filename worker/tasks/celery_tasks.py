"""The Celery tasks. They carry a flow id, or a webhook delivery's id, only: the token, the event and the
endpoint's URL and secret stay in Redis, out of the broker and Flower."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

from celery import Task
from celery.signals import task_received, task_revoked, worker_ready, worker_shutdown, worker_shutting_down
from celery.worker import state as worker_state

from worker.config.settings import get_settings
from worker.connections.checks import CheckLoop
from worker.flows.enqueuer import Enqueuer
from worker.flows.flow import FlowState
from worker.flows.store import TakeOutcome
from worker.observing import tracing
from worker.observing.logs import flow_context
from worker.observing.task_events import TaskEvents
from worker.oktopost.errors import TransientError
from worker.queueing.names import (
    COMPLETE_TASK,
    DELETE_CONNECTION_TASK,
    DELIVER_TASK,
    DELIVERIES,
    FLOWS,
    VERIFY_TASK,
    kind_queues,
)
from worker.tasks import runtime, work
from worker.tasks.celery_app import app
from worker.tasks.stopping import GracefulStop
from worker.tasks.sweeper import Sweeper
from worker.upstream.budget import NoBudgetInTime
from worker.upstream.parking import Unparker
from worker.webhooks.dispatcher import Dispatcher

log = logging.getLogger(__name__)
# A countdown longer than the broker's visibility timeout runs the task twice (celery #2599): a longer
# wait is made of countdowns of at most this fraction of it, the task looking again at each.
COUNTDOWN_FRACTION = 0.5


# The flow tasks, by the state of the flow each works on.
_WORKS_ON = {VERIFY_TASK: FlowState.VERIFYING, COMPLETE_TASK: FlowState.COMPLETING}
# The flow tasks send their task events themselves (worker.observing.task_events), not through Celery.
_FLOW_TASK = {"acks_late": True, "reject_on_worker_lost": True, "send_events": False, "bind": True}


@app.task(name=VERIFY_TASK, **_FLOW_TASK)
def verify(self: Task, flow_id: str) -> str:
    return _flow_task(self, flow_id, work.verify_flow)


@app.task(name=COMPLETE_TASK, **_FLOW_TASK)
def complete(self: Task, flow_id: str) -> str:
    return _flow_task(self, flow_id, work.complete_flow)


# Celery's pools that run a task in the process that received it: only there can it read an early take.
_IN_PROCESS_POOLS = frozenset({"celery.concurrency.thread", "celery.concurrency.solo"})
_Work = Callable[[work.TaskContext, str, work.EarlyTake | None], work.TaskOutcome]


def _flow_task(task: Task, flow_id: str, work_on: _Work) -> str:
    """A flow task's run between its task-started and its task-succeeded (or task-failed) events."""
    request = task.request
    events = task_events(request.hostname)
    events.started(request.id)
    started = time.perf_counter()
    early = _early_takes.pop(request.id, None)
    try:
        with flow_context(flow_id):
            outcome = _handed_back(flow_id, early) or _ran(work_on(runtime.task_context(), flow_id, early))
    except Exception as error:
        events.failed(request.id, error)
        raise
    events.succeeded(request.id, outcome, time.perf_counter() - started)
    return outcome


def _handed_back(flow_id: str, early: work.EarlyTake | None) -> str | None:
    """A flow task starting: its flow stops being held as received; while the worker stops, it goes
    back to the queue untouched (and so does a flow its early take took)."""
    tracing.describe_flow_id(flow_id)  # on the task's span, when traces are on
    context = runtime.task_context()
    context.leases.started(flow_id)
    if _graceful is None or not _graceful.requested:
        return None
    if early is not None:
        taken = early.abandon(context)
        if taken is not None and taken.outcome is TakeOutcome.TAKEN:
            return _graceful.hand_back_unstarted(flow_id, early.owner)
    return _graceful.hand_back_unstarted(flow_id)


def _ran(outcome: work.TaskOutcome) -> str:
    if _unparker is not None:
        if outcome is work.TaskOutcome.PARKED:
            _unparker.wake()  # the flow's account may be due before the unparker's next look
        else:
            _unparker.call_ended()  # a ramp after a pause may release the next parked flow now
    return outcome.value


@app.task(name=DELIVER_TASK, acks_late=True, reject_on_worker_lost=True)
def deliver(delivery_id: str) -> str:
    """One attempt of a webhook delivery, when it is due; schedules itself again when one is to come."""
    result = runtime.courier().attempt(delivery_id)
    if result.again_in is not None:
        deliver.apply_async(args=[delivery_id], countdown=min(result.again_in, longest_countdown()))
    if result.successor:  # the flow's next event at that endpoint was held behind this one
        deliver.apply_async(args=[result.successor])
    if result.waiting:  # this attempt's place at the endpoint goes to a delivery waiting for one
        deliver.apply_async(args=[result.waiting])
    return result.outcome


# max_retries=None on the task itself: Celery reads retry(max_retries=None) as "the task's default" (3)
@app.task(
    name=DELETE_CONNECTION_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None
)
def delete_connection(self: Task, tenant: str, connection_id: str) -> str:
    """Oktopost's DELETE of a connection the caller deleted, then its event; a transient fault or no
    budget in time tries again later, for as long as it takes (the connection stays `deleting`
    meanwhile)."""
    try:
        return runtime.connection_deleter().delete(tenant, connection_id).value
    except (TransientError, NoBudgetInTime) as fault:
        raise self.retry(countdown=deletion_retry_delay(self.request.retries), exc=fault) from None


def deletion_retry_delay(retries: int) -> float:
    """1 s, 2 s, 4 s ... up to a minute between a deletion's attempts."""
    return min(60.0, 2.0 ** min(retries, 6))


def longest_countdown() -> float:
    options = app.conf.broker_transport_options or {}
    return float(options.get("visibility_timeout", 3600)) * COUNTDOWN_FRACTION


def enqueuer(redis_url: str) -> Enqueuer:
    """The Enqueuer of these tasks, for a process whose flows live at `redis_url`."""
    return Enqueuer(app, redis_url)


# A released flow's reserved slot counts as a call in flight for its task's start and its call: a task
# that starts later still finds it until a period after that (then it asks the budget again), and one
# that never starts (its flow ended meanwhile) holds the slot no longer than this and a period.
RELEASED_START_SECONDS = 5.0

_sweeper: Sweeper | None = None
_unparker: Unparker | None = None
_dispatcher: Dispatcher | None = None
_checks: CheckLoop | None = None
_graceful: GracefulStop | None = None
_events: TaskEvents | None = None
_events_lock = threading.Lock()
# Takes sent when their flow tasks were received, by task id, until the task starts (or is revoked).
_early_takes: dict[str, work.EarlyTake] = {}


def task_events(hostname: str | None) -> TaskEvents:
    """This process's flow task events, made with the first (named by the worker's node name)."""
    global _events
    if _events is None:
        with _events_lock:
            if _events is None:
                _events = TaskEvents(app, hostname or socket.gethostname())
    return _events


@worker_ready.connect
def _start_background_threads(sender: object = None, **_: object) -> None:
    """The worker's threads beside its tasks: the sweeper always; the unparker when it serves flows; the
    webhook dispatcher when it serves deliveries."""
    global _sweeper, _unparker, _dispatcher, _checks, _graceful
    name = str(getattr(sender, "hostname", "") or socket.gethostname())
    settings, store = get_settings(), runtime.store()
    budgets = {budget.names.parked_flows: budget for budget in runtime.upstreams().budgets()}
    tasks = enqueuer(settings.store_as_broker_url)
    context = runtime.task_context()
    leases, metrics = context.leases, context.metrics
    _graceful = GracefulStop(store, tasks, leases, settings.worker_shutdown_grace_seconds)
    accounts = [budget.account for budget in budgets.values()]
    served = set(app.amqp.queues.consume_from or app.amqp.queues)
    serves = [kind for kind, queue in kind_queues(settings.channel_prefix).items() if queue in served]
    _sweeper = Sweeper(store, tasks, name=name, accounts=accounts, metrics=metrics, serves=serves)
    _sweeper.start()
    if FLOWS in serves:  # a worker serving flows releases parked ones
        policy = runtime.retry_policy(settings)
        _unparker = Unparker(
            store,
            tasks,
            budgets.get,
            hold=RELEASED_START_SECONDS + policy.max_attempt_seconds + 1,
            least_seconds=policy.min_attempt_seconds,
            call_seconds=policy.max_attempt_seconds + 1,  # a flow's first ask's hold (work._first_ask)
            metrics=metrics,
        )
        _unparker.start()
        _checks = CheckLoop(
            runtime.connection_checker(settings),
            lambda tenant, connection_id: delete_connection.apply_async(args=[tenant, connection_id]),
            tick=min(1.0, settings.connection_check_seconds or 1.0),
        )
        _checks.start()
    if DELIVERIES in serves:
        # a worker that also serves flows keeps half its threads for them, whatever the endpoints do
        controller = getattr(sender, "controller", None)
        threads = int(getattr(controller, "concurrency", None) or app.conf.worker_concurrency or 1)
        runtime.configure_delivery_slots(threads if len(served) == 1 else threads // 2)
        _dispatcher = Dispatcher(
            store.redis,
            store.names,
            runtime.webhook_store(),
            enqueuer(settings.store_as_broker_url).enqueue_delivery,
            name,
            grace=max(15.0, 2 * runtime.courier().lease),
        )
        _dispatcher.start()


@task_received.connect
def _hold_received_flow(sender: object = None, request: object = None, **_: object) -> None:
    """A flow task received and not started yet: its task-received event, and the process holds its flow
    (worker.tasks.leases). When a thread is free to run it at once, its flow's take is sent now, and
    the task reads its answer when it starts (`work.EarlyTake`): Redis answers while Celery hands the
    task to the thread, instead of after."""
    name = getattr(request, "name", None)
    if name not in _WORKS_ON:
        return
    task_events(getattr(request, "hostname", None)).received(request)
    args = getattr(request, "args", None)
    if not args:
        return
    flow_id, context, owner = str(args[0]), runtime.task_context(), ""
    task_id = str(getattr(request, "id", "") or "")
    if task_id and _starts_at_once(sender, request):
        try:
            early = work.take_early(context, flow_id, _WORKS_ON[str(name)])
        except Exception as error:  # the task takes its flow itself when it starts
            log.warning("flow %s: early take not sent: %s", flow_id, type(error).__name__)
        else:
            _early_takes[task_id] = early
            owner = early.owner
            log.debug("flow %s: its take sent at the task's receipt", flow_id)
    context.leases.expect(flow_id, owner)


def _starts_at_once(consumer: object, request: object) -> bool:
    """Whether a task just received starts now, in this process: a pool that runs tasks here (threads,
    or solo; a prefork child would not find the take), no countdown, the worker not stopping, and fewer
    tasks reserved (running or waiting for a thread) than the pool has threads."""
    if getattr(request, "eta", None) or (_graceful is not None and _graceful.requested):
        return False
    pool = getattr(consumer, "pool", None)
    if type(pool).__module__ not in _IN_PROCESS_POOLS:
        return False
    controller = getattr(consumer, "controller", None)
    threads = getattr(controller, "concurrency", None) or app.conf.worker_concurrency
    return bool(threads) and len(worker_state.reserved_requests) < int(threads)


@task_revoked.connect
def _revoked_flow_task(
    sender: object = None,
    request: object = None,
    terminated: bool = False,
    signum: int | None = None,
    expired: bool = False,
    **_: object,
) -> None:
    """A flow task revoked (from Flower, say) before it ran: its task-revoked event, as Celery's.
    `sender` is the task, `request` its context."""
    if getattr(sender, "name", None) in _WORKS_ON:
        task_id = str(getattr(request, "id", ""))
        task_events(getattr(request, "hostname", None)).revoked(task_id, terminated, signum, expired)
        args = getattr(request, "args", None)
        context = runtime.task_context()
        if args:  # no longer received here: its lease is not renewed, and lapses as a queued one
            context.leases.started(str(args[0]))
        early = _early_takes.pop(task_id, None)
        if early is not None:
            early.abandon(context)


@worker_shutting_down.connect
def _hand_back_flows(**_: object) -> None:
    """SIGTERM (or Ctrl-C): every flow held here goes back at once (worker.tasks.stopping)."""
    if _graceful is not None:
        _graceful.begin()


@worker_shutdown.connect
def _stop_background_threads(**_: object) -> None:
    if _graceful is not None:  # its looks for flows handed back that no task took, within the grace
        _graceful.wait()
    if _checks is not None:
        _checks.stop()
    if _unparker is not None:
        _unparker.stop()
    if _sweeper is not None:
        _sweeper.stop()
    if _dispatcher is not None:
        _dispatcher.stop()
    if runtime.task_context.cache_info().currsize:  # tasks ran here: their heartbeat stops too
        runtime.task_context().leases.stop()
    if runtime.worker_metrics.cache_info().currsize:  # the last second's metrics reach Redis
        runtime.worker_metrics().close()
    if _events is not None:  # the last task events reach Flower
        _events.close()
