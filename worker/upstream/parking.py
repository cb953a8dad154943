"""The unparker: queues the tasks of flows parked for their account's budget when a slot frees for them.

A task whose flow must wait for the account's budget parks the flow in Redis (worker.tasks.work, a sorted set
per account scored by the flow's deadline) and ends, so a burst on one account never fills the worker's
threads while other accounts' flows wait behind it. One thread in every worker process watches the
accounts with parked flows and, when one is due, releases its flows earliest deadline first, as many as
the budget has room for: each gets a slot reserved in its name and its task queued again, in one Lua
step (release_parked.lua). Several unparkers are safe: a flow leaves the parked set exactly once.

A parked flow that no slot can come for before its deadline ends at once, as a task waiting in its
thread would: `authorization.expired` with reason `upstream_blocked` when the account's pause or its
day's limit outlives it, without a reason when the budget is merely too busy. An account that no worker
knows (removed from the configuration, or added and its workers not started yet) is overdue for good
after STRANDED_SECONDS: its flows wait on for a worker that knows it until STRANDED_MARGIN_SECONDS before
their deadlines, when any unparker fails them (`unauthorized`, as their tasks would); once none is left
it forgets the account, so later callbacks of it are queued, not parked.

After a pause (a 429), the account's flows go out through a window: one call first, then RAMP_WINDOW
calls in flight, the next as soon as one ends here, so a new 429 meets a call or two, not every parked
flow. A call counts against the window for RAMP_PROBE_SECONDS only: one that hangs holds nothing back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from worker import scripts
from worker.events import ExpiredReason
from worker.flows.enqueuer import QueuedTask
from worker.flows.flow import WORKING_STATES, FlowState
from worker.flows.store import FlowStore
from worker.observing import tracing
from worker.observing.metrics import WorkerMetrics
from worker.oktopost.errors import UnauthorizedError
from worker.replies import text
from worker.threads import BackgroundThreads
from worker.upstream.budget import UpstreamBudget

log = logging.getLogger(__name__)

BATCH = 32  # parked flows looked at per release step
ACCOUNTS_PER_PASS = 256  # due accounts taken per pass; the rest come in the next one, at once
# The longest between looks when no account is due: a task of this process that parks a flow wakes the
# thread at once (`wake`), so only a flow parked by another process, whose own unparker looks at once,
# waits for this one's next look.
MAX_IDLE_SECONDS = 1.0
# A slot is reserved this long before it frees, so the released task is under way when it does (it makes
# its call no sooner): without it, every cycle of a saturated account would lose the unparker's, the
# broker's and the task's start-up to the budget, a tenth of its rate on a busy machine. A task that
# starts early holds its thread until then: a tenth of a second at most.
LEAD_SECONDS = 0.1
# An account overdue this long has no unparker that knows it (a knowing one moves its moment at each look).
STRANDED_SECONDS = 30.0
# Its flows still wait for a worker that knows it (a deploy that adds a tenant may start those workers
# after the shim, minutes later) until this long before their deadlines: then they fail, with the reason,
# before the sweeper would end them as expired.
STRANDED_MARGIN_SECONDS = 5.0
# After a pause, the ramp is over once this many calls have ended since (or after account.RAMP_SECONDS).
RAMP_CALLS = 32
# While a ramp lasts, the most calls in flight once the first call after the pause has ended: what a new
# 429 can meet. One leaves the worker idle while each released task starts (a few milliseconds); more than
# two went out no faster in the faults bench, and each more wastes a task run at every new 429.
RAMP_WINDOW = 2
# A call in flight counts against the ramp's window for this long after its grant: a block still in force
# answers a call at once (a 429), so one not answered by then met none, and a call that hangs (until
# OKTOPOST_TIMEOUT_SECONDS) does not hold the account's parked flows back.
RAMP_PROBE_SECONDS = 1.0


class TaskQueue(Protocol):
    """What the unparker needs of worker.flows.enqueuer.Enqueuer."""

    def prepared(self, flow_id: str, state: FlowState) -> QueuedTask | None: ...

    def enqueue(self, flow_id: str, state: FlowState) -> None: ...


class Unparker(BackgroundThreads):
    """`budgets` gives an account's budget by the name of its parked set (None for an account this process
    does not know);
    `hold`: how long a reserved slot is held, for the task's start and its call;
    `call_seconds`: how long a call under way is held (its ask's hold; `hold` when not given)."""

    def __init__(
        self,
        store: FlowStore,
        enqueuer: TaskQueue,
        budgets: Callable[[str], UpstreamBudget | None],
        hold: float,
        least_seconds: float,
        call_seconds: float | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics  # counts the parked flows it ends expired, as the tasks' expiries
        self.enqueuer = enqueuer
        self.budgets = budgets
        self.hold = hold
        self.least_seconds = least_seconds
        # a call whose latest end lies further from now than this was granted within the ramp's probe
        self.counted_after = max(0.0, (hold if call_seconds is None else call_seconds) - RAMP_PROBE_SECONDS)
        self._release = scripts.register(store.redis, "release_parked")
        self._drop = scripts.register(store.redis, "parked_drop")
        # accounts whose last release a ramp held back until calls in flight end (their parked sets), and
        # whether a call has ended here since: those accounts are then due at once, not at their next look
        self._ramping: set[str] = set()
        self._call_ended = False
        self._woken = threading.Event()
        super().__init__({"oktopost-unparker": self._run})

    def wake(self) -> None:
        """A flow was parked here: its account may be due before the next look."""
        self._woken.set()

    def call_ended(self) -> None:
        """A task here ended its call: an account whose ramp holds parked flows back is due now (its
        moment in the parked accounts is only the fallback, for calls that end in other processes)."""
        if self._ramping:
            self._call_ended = True
            self._woken.set()

    def release_due(self) -> tuple[int, float]:
        """One pass over the accounts that are due; returns (flows released, seconds until the next
        account is due, at most MAX_IDLE_SECONDS)."""
        names = self.store.names
        with self.store.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.zrange(names.parked_accounts, 0, ACCOUNTS_PER_PASS - 1, withscores=True)
            (seconds, micros), accounts = pipe.execute()
        now = seconds + micros / 1e6
        released, next_in = 0, MAX_IDLE_SECONDS
        listed = {text(raw) for raw, _ in accounts}
        self._ramping &= listed  # an account no longer parked has no ramp to wake for
        ramp_due = set(self._ramping) if self._call_ended else set()
        self._call_ended = False
        for raw, due in accounts:
            account = text(raw)
            if due > now and account not in ramp_due:
                next_in = min(next_in, due - now)
                continue
            self._ramping.discard(account)  # until its release says a ramp holds flows back again
            budget = self.budgets(account)
            if budget is None:  # a worker that knows the account releases its flows, unless none does
                if due < now - STRANDED_SECONDS:
                    self._fail_stranded(account, now)
                continue
            try:
                count, due_in = self.release(budget)
            except Exception as error:
                log.warning("parked flows of an account not released: %s", type(error).__name__)
                continue
            released += count
            if due_in >= 0:
                next_in = min(next_in, due_in)
        return released, max(0.0, next_in)

    def release(self, budget: UpstreamBudget) -> tuple[int, float]:
        """Releases the account's parked flows while its budget has room; returns (flows released,
        seconds until the account is due again, -1 when none is parked any more)."""
        released = 0
        while True:
            flow_ids, more, due_in = self._release_batch(budget)
            released += len(flow_ids)
            if not more:
                return released, due_in

    def _release_batch(self, budget: UpstreamBudget) -> tuple[list[str], bool, float]:
        store, names, account = self.store, self.store.names, budget.names
        lead = min(LEAD_SECONDS, budget.period / 4)
        # as many candidates as the window seems to have room for within the lead (the script decides):
        # a message is built for each, and a slot usually frees one at a time
        now = time.time()
        with store.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(account.budget_window, f"({now - budget.period + lead}", "+inf")
            pipe.zrange(account.parked_flows, 0, BATCH - 1)
            pipe.get(account.resume_ramp)
            # in flight, for a ramp: granted within its probe
            pipe.zcount(account.budget_window, f"({now + self.counted_after}", "+inf")
            in_window, parked, ramp_from, in_flight = pipe.execute()
        # while a ramp lasts, about as many as the script will release: no message for one it holds back
        ramp_room = BATCH if ramp_from is None else max(0, RAMP_WINDOW - int(in_flight))
        room = min(BATCH, max(1, budget.limit - int(in_window)), ramp_room)
        candidates = [text(m) for m in parked[:room]]
        with store.redis.pipeline(transaction=False) as pipe:
            for flow_id in candidates:
                pipe.hmget(names.flow_state(flow_id), "state", "traceparent")
            rows = pipe.execute()
        work: list[tuple[str, FlowState, QueuedTask | None]] = []
        traces: dict[str, str] = {}
        for flow_id, (raw, trace) in zip(candidates, rows, strict=True):
            state = FlowState(text(raw)) if raw is not None else FlowState.VERIFYING
            # a flow that left the working states is dropped from the set by the script
            state = state if state in WORKING_STATES else FlowState.VERIFYING
            traces[flow_id] = text(trace) if trace else ""
            with tracing.joined(traces[flow_id]):  # its task stays in its flow's trace
                work.append((flow_id, state, self.enqueuer.prepared(flow_id, state)))
        pushes = [prepared for _, _, prepared in work if prepared is not None]
        broker = pushes[0].queue if pushes else ""
        args: list[str | float] = [budget.limit, budget.period, self.hold]
        args += ["" if budget.account.daily_limit is None else budget.account.daily_limit]
        args += [account.daily_calls_prefix, store.lifetimes.queued_lease, self.least_seconds, broker]
        args += [lead, RAMP_CALLS, RAMP_WINDOW, self.counted_after]
        for flow_id, state, prepared in work:
            message = (prepared.message, prepared.event_channel, prepared.event) if prepared else ("",) * 3
            args += [flow_id, state.value, *message]
        answer = self._release(
            keys=[
                account.parked_flows,
                names.parked_accounts,
                account.budget_window,
                account.budget_queue,
                account.account_pause,
                names.leases,
                account.early_slots,
                account.resume_ramp,
                *(names.flow_state(flow_id) for flow_id, _, _ in work),
            ],
            args=args,
        )
        released = [text(flow_id) for flow_id in answer[0]]
        doomed = [text(item) for item in answer[3]]
        for flow_id, kind in zip(doomed[::2], doomed[1::2], strict=True):
            self._end_unserved(flow_id, "upstream_blocked" if kind == "blocked" else None)
        by_id = {flow_id: (state, prepared) for flow_id, state, prepared in work}
        for flow_id in released:
            state, prepared = by_id[flow_id]
            if prepared is None:  # the broker is not this Redis: the task is sent now
                with tracing.joined(traces[flow_id]):
                    self._send(flow_id, state)
        if released:
            log.info("released %d parked flow(s) of account %s", len(released), budget.names.account_id)
        if text(answer[4]) == "1":
            self._ramping.add(account.parked_flows)
        return released, text(answer[1]) == "1", float(text(answer[2]))

    def _end_unserved(self, flow_id: str, reason: ExpiredReason | None) -> None:
        """A parked flow that no slot can come for in time ends now, not at its deadline."""
        try:
            flow = self.store.get(flow_id)
            if flow is None or flow.state not in WORKING_STATES:
                return
            if self.store.expire_unserved(flow, reason).done:
                why = (
                    "its account is blocked past its deadline" if reason else "no budget before its deadline"
                )
                log.warning("parked flow %s expires: %s", flow_id, why)
                if self.metrics is not None:
                    self.metrics.outcome("expired")
        except Exception as error:  # it expires at its deadline instead
            log.warning("parked flow %s: ending it failed: %s", flow_id, type(error).__name__)

    def _fail_stranded(self, parked_set: str, now: float) -> None:
        """Fails the parked flows of an account no worker knows whose deadlines are near, a batch at a time,
        and forgets the account once none is left."""
        store = self.store
        last = now + STRANDED_MARGIN_SECONDS  # a parked flow's score is its deadline
        flow_ids = [text(member) for member in store.redis.zrangebyscore(parked_set, "-inf", last, 0, BATCH)]
        for flow_id in flow_ids:
            flow = store.get(flow_id)
            if flow is None or flow.state not in WORKING_STATES:
                continue
            message = f"Oktopost account {store.account_of(flow)} is not configured on any worker"
            if store.fail_unclaimed(flow, UnauthorizedError.code, message).done:
                log.warning("parked flow %s failed: %s", flow_id, message)
        self._drop(keys=[parked_set, store.names.parked_accounts], args=flow_ids)

    def _send(self, flow_id: str, state: FlowState) -> None:
        try:
            self.enqueuer.enqueue(flow_id, state)
        except Exception as error:  # its lease lapses now, and the sweeper queues it again
            log.warning("flow %s: released but not queued: %s", flow_id, type(error).__name__)
            self.store.lapse_lease(flow_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._woken.clear()
            try:
                _, next_in = self.release_due()
            except Exception as error:  # Redis away: look again once it is back
                log.warning("releasing parked flows failed: %s", type(error).__name__)
                next_in = 1.0
            self._woken.wait(max(0.002, next_in))
