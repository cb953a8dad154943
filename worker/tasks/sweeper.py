"""The sweeper: ends flows whose deadline passed and takes up flows whose work stopped showing progress.

It runs as a thread in every worker process. Deadlines are enforced here, not by Celery's `expires`
(which is not carried to retries, celery #3297), so a flow that never sees its callback, a token that
dies mid-verification and a selection that never comes all end within a second of their deadline,
even when no request touches the flow again. Several sweepers are safe: each transition is atomic and a
lapsed lease is taken by exactly one of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from worker.flows.enqueuer import QueuedTask
from worker.flows.flow import WORKING_STATES, FlowState
from worker.flows.store import FlowStore, RequeueOutcome
from worker.observing import tracing
from worker.observing.metrics import WorkerMetrics
from worker.replies import text
from worker.tasks.work import TaskOutcome, count_expired, expire_flow
from worker.threads import BackgroundThreads
from worker.upstream.account import Account

log = logging.getLogger(__name__)


class TaskQueue(Protocol):
    """What the sweeper needs of worker.flows.enqueuer.Enqueuer."""

    def prepared(self, flow_id: str, state: FlowState) -> QueuedTask | None: ...

    def enqueue(self, flow_id: str, state: FlowState) -> None: ...


# the flows the account's pause can end early: they need a call before their deadline (a flow still
# awaiting its callback may be called back after the pause, and its deadline then moves)
BLOCKABLE_STATES = (*WORKING_STATES, FlowState.AWAITING_SELECTION)


def sweep_once(
    store: FlowStore,
    enqueuer: TaskQueue,
    accounts: Sequence[Account] = (),
    metrics: WorkerMetrics | None = None,
) -> tuple[int, int]:
    """One pass over the flows and the Oktopost `accounts`; returns (flows expired, flows taken up
    again). One flow's trouble is logged and the pass goes on with the others. `metrics` counts the
    expiries of flows a worker had to finish."""
    now = store.clock.read_time()  # Redis's clock, read once per pass
    expired = requeued = 0
    for account, paused_until in _paused(store, accounts):
        expired += _end_blocked(store, account, paused_until, now, metrics)
    for flow_id in store.due_deadlines(now):
        try:
            expired += expire_flow(store, flow_id, metrics) is TaskOutcome.EXPIRED
        except Exception as error:
            log.warning("flow %s: expiry failed: %s", flow_id, type(error).__name__)
    for flow_id in store.due_leases(now):
        try:
            requeued += take_up(store, enqueuer, flow_id)
        except Exception as error:
            log.warning("flow %s: taking it up again failed: %s", flow_id, type(error).__name__)
    return expired, requeued


def _paused(store: FlowStore, accounts: Sequence[Account]) -> list[tuple[Account, float]]:
    """The accounts with a pause entered and not yet seen over, and its end: one read for them all."""
    if not accounts:
        return []
    ends = store.redis.mget([account.names.account_pause for account in accounts])
    return [(account, float(end)) for account, end in zip(accounts, ends, strict=True) if end is not None]


def _end_blocked(
    store: FlowStore, account: Account, paused_until: float, now: float, metrics: WorkerMetrics | None
) -> int:
    """While the account is paused, ends at once its flows whose deadline comes before the pause's end
    (`authorization.expired`, reason upstream_blocked); once it is over, says so (one process does)."""
    if paused_until <= now:
        account.resume_if_over()
        return 0
    ended = 0
    for flow_id in _blocked(store, account.names.account_id, paused_until):
        flow = store.get(flow_id)
        if flow is None or flow.state not in BLOCKABLE_STATES or flow.deadline >= paused_until:
            continue
        try:
            if store.expire_blocked(flow).done:
                log.warning("flow %s expires: its account's pause outlives its token", flow_id)
                count_expired(metrics, flow)
                ended += 1
        except Exception as error:
            log.warning("flow %s: ending it failed: %s", flow_id, type(error).__name__)
    return ended


BLOCKED_PAGE = 500  # deadlines read per round trip while an account is paused


def _blocked(store: FlowStore, account_id: str, paused_until: float) -> list[str]:
    """The account's flows that need a call before the pause ends: every deadline before its end is
    looked at, a page at a time (flows abandoned before their callback, of any account, can be many and
    come first), two fields of each, never a whole hash."""
    blocked: list[str] = []
    start = 0
    blockable = {state.value for state in BLOCKABLE_STATES}
    while True:
        page = store.redis.zrangebyscore(
            store.names.deadlines, "-inf", f"({paused_until}", start=start, num=BLOCKED_PAGE
        )
        with store.redis.pipeline(transaction=False) as pipe:
            for member in page:
                pipe.hmget(store.names.flow_state(text(member)), "state", "account")
            rows = pipe.execute()
        for member, (state, account) in zip(page, rows, strict=True):
            owner = text(account) if account else store.default_account
            if state is not None and text(state) in blockable and owner == account_id:
                blocked.append(text(member))
        if len(page) < BLOCKED_PAGE:
            return blocked
        start += BLOCKED_PAGE


def take_up(store: FlowStore, enqueuer: TaskQueue, flow_id: str) -> bool:
    """Queues the flow's task again when its lease lapsed: with the lease's hand-over when the broker is
    this Redis, else right after it, and when that fails the lease lapses again for the next pass."""
    flow = store.get(flow_id)
    # a flow with no work left (or gone) loses its lease inside the script, whatever state is asked for
    state = flow.state if flow is not None and flow.state in WORKING_STATES else FlowState.VERIFYING
    with tracing.joined(flow.traceparent if flow is not None else ""):  # the task stays in its flow's trace
        prepared = enqueuer.prepared(flow_id, state)
        if store.requeue_lapsed(flow_id, state, prepared) is not RequeueOutcome.REQUEUED:
            return False
        if prepared is None:
            try:
                enqueuer.enqueue(flow_id, state)
            except Exception:
                store.lapse_lease(flow_id)
                raise
    log.warning("flow %s: no progress from its worker, queued again", flow_id)
    return True


HEARTBEAT_SECONDS = 1.0  # how often a worker's sweeper says the worker is consuming
WORKER_MARK_SECONDS = 60.0  # a mark older than this is a worker gone without a word (killed): dropped


class Sweeper(BackgroundThreads):
    """`name`: the worker's node name, marked alive in Redis each HEARTBEAT_SECONDS (`up` waits for it),
    and marked too under each kind of task it `serves` (flows, deliveries: the alert on a queue no
    worker consumes reads these); `accounts`: the configured Oktopost accounts, whose pauses it watches."""

    def __init__(
        self,
        store: FlowStore,
        enqueuer: TaskQueue,
        interval: float = 0.25,
        name: str | None = None,
        accounts: Sequence[Account] = (),
        metrics: WorkerMetrics | None = None,
        serves: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.enqueuer = enqueuer
        self.accounts = accounts
        self.metrics = metrics
        self.interval = interval
        self.name = name
        names = store.names
        self._marks = [names.workers, *(names.queue_workers(queue) for queue in serves)]
        self._beat_at = 0.0
        super().__init__({"oktopost-sweeper": self._run})

    def stop(self) -> None:
        super().stop()
        if self.name is not None:
            try:
                with self.store.redis.pipeline(transaction=False) as pipe:
                    for marks in self._marks:
                        pipe.zrem(marks, self.name)
                    pipe.execute()
            except Exception as error:  # Redis away at shutdown: the mark ages out by itself
                log.debug("worker mark not removed: %s", type(error).__name__)

    def _beat(self) -> None:
        now = self.store.clock.now()
        if self.name is not None and now - self._beat_at >= HEARTBEAT_SECONDS:
            with self.store.redis.pipeline(transaction=False) as pipe:
                for marks in self._marks:
                    pipe.zadd(marks, {self.name: now})
                    pipe.zremrangebyscore(marks, "-inf", now - WORKER_MARK_SECONDS)
                pipe.execute()
            self._beat_at = now

    def _run(self) -> None:
        while True:
            try:
                self._beat()
                sweep_once(self.store, self.enqueuer, self.accounts, self.metrics)
            except Exception as error:  # Redis away: keep sweeping once it is back
                log.warning("sweep failed: %s", type(error).__name__)
                self._stop.wait(1.0)
            if self._stop.wait(self.interval):
                return
