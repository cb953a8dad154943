"""What a task does with a flow: verify its token, or complete its selection, and record the outcome.

Each function takes the flow's work (nothing to do when the flow is no longer in the state it works on:
a redelivered or duplicate task, or one whose flow another task holds), calls Oktopost through the
deadline-aware retry policy under the process's lease heartbeat, and ends with exactly one flow
transition, fenced with the owner id taking the work handed out: a task that lost its flow meanwhile (a
pause, a partition) changes nothing. Celery is not needed here; worker.tasks.celery_tasks wraps these.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from worker.events import ConnectedCredential, EntityOffer, ExpiredReason
from worker.flows.flow import WORKING_STATES, Flow, FlowState
from worker.flows.store import BudgetAsk, FlowStore, SentTake, Taken, TakeOutcome
from worker.flows.transition import Aftermath, Transition, TransitionOutcome
from worker.observing import tracing
from worker.observing.metrics import WorkerMetrics, callback_to_terminal_fields, outcome_fields
from worker.oktopost import (
    Credential,
    EntityChoice,
    OktopostClient,
    VerifiedProfile,
    check_complete_fits,
    check_verify_fits,
)
from worker.oktopost.errors import (
    OktopostError,
    RefusedError,
    RejectedError,
    TokenInvalidError,
)
from worker.tasks.leases import Held, LeaseKeeper, WorkLost
from worker.upstream.budget import (
    AccountBlocked,
    Asked,
    Grant,
    NoBudgetInTime,
    NoBudgetNow,
    UpstreamBudget,
)
from worker.upstream.clients import Upstream, Upstreams
from worker.upstream.retry import Admission, DeadlineReached, RetryPolicy, call_until_deadline

log = logging.getLogger(__name__)
T = TypeVar("T")
TOKEN_END_OF_LIFE = 0.25  # the share of a token's life, at its end, in which "invalid" means expired
# A wait for budget longer than this parks the flow and frees the thread; a shorter one is waited out in
# the thread, as parking and being released take three Redis calls and a trip through the broker,
# about as long as the wait itself, and a wait this short holds a thread for no time that matters.
PARK_AFTER_SECONDS = 0.05
# A flow of an account this worker does not know is due again this long after it parks: released by a
# worker that knows the account, its task may meet this one again, once a second at most
UNKNOWN_ACCOUNT_WAIT = 1.0


class TaskOutcome(StrEnum):
    """What a task did with its flow (the task's result, shown in Flower)."""

    SKIPPED = "skipped"  # the flow was not (or no longer) in the state this task works on, or not ours
    COMPLETED = "completed"
    SELECTION_REQUIRED = "selection_required"
    FAILED = "failed"
    EXPIRED = "expired"
    PARKED = "parked"  # the flow waits for its account's budget without a thread (worker.upstream.parking)


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a task works with; one per worker process (built by worker.tasks.runtime)."""

    store: FlowStore
    upstreams: Upstreams[OktopostClient]  # each Oktopost account's client and budget
    policy: RetryPolicy
    metrics: WorkerMetrics
    leases: LeaseKeeper


@dataclass(frozen=True, slots=True)
class _Job:
    """One task's work on one flow: the flow as it was taken, the hold that fences it, its account's
    client and budget, the budget slots of its calls that answered (their end is recorded last), and the
    ask of its first call if the take made it."""

    context: TaskContext
    flow: Flow
    held: Held
    upstream: Upstream[OktopostClient]
    answered: list[Grant]
    asked: list[Asked]  # the first call's ask, made with the take, until an admission uses it
    token: str | None  # the flow's token as taken (None: gone with its lifetime)

    @property
    def owner(self) -> str:
        return self.held.owner


@dataclass(frozen=True, slots=True)
class EarlyTake:
    """A flow's take sent when its task was received, its answer read when the task starts: the round
    trip overlaps Celery's hand-off of the task to a thread (see worker.tasks.celery_tasks). `waiter` is
    the first call's ask's, "" when the take makes none."""

    owner: str
    sent: SentTake
    waiter: str

    def taken(self) -> tuple[Taken, list[Asked]]:
        """The take's answer, and the first call's ask it made, if it made one."""
        taken = self.sent.taken()
        return taken, _asked(taken, self.waiter)

    def abandon(self, context: TaskContext) -> Taken | None:
        """The take's answer, for a task that does not work on its flow: the ask it made goes back."""
        try:
            taken, asked = self.taken()
        except Exception:  # Redis away: the lease it may have taken lapses, as a paused worker's does
            return None
        upstream = context.upstreams.get(context.store.default_account)  # the account the ask was of
        if upstream is not None:
            for unused in asked:
                upstream.budget.unused(unused)
        return taken


def take_early(context: TaskContext, flow_id: str, state: FlowState) -> EarlyTake:
    """The take of a task's flow, sent now and read by the task (`early=`)."""
    owner = secrets.token_hex(16)
    ask, waiter = _first_ask(context)
    return EarlyTake(owner, context.store.send_take(flow_id, owner, state, ask), waiter)


def verify_flow(context: TaskContext, flow_id: str, early: EarlyTake | None = None) -> TaskOutcome:
    return _work_on(
        context,
        flow_id,
        early,
        FlowState.VERIFYING,
        "verify",
        lambda client, token, flow, timeout: check_verify_fits(
            client.verify(token, timeout=timeout), flow.network, flow.entity_type
        ),
        _verified,
    )


def complete_flow(context: TaskContext, flow_id: str, early: EarlyTake | None = None) -> TaskOutcome:
    return _work_on(
        context,
        flow_id,
        early,
        FlowState.COMPLETING,
        "complete",
        lambda client, token, flow, timeout: check_complete_fits(
            client.complete(token, flow.selected_ids, timeout=timeout), flow.network
        ),
        lambda job, credentials, attempts: _complete(job, credentials, attempts),
        # Oktopost refusing ids we offered from its own list means the selection no longer holds
        refusal_code=lambda refused: (
            "invalid_selection"
            if isinstance(refused, RejectedError) and not isinstance(refused, TokenInvalidError)
            else refused.code
        ),
    )


def _work_on(
    context: TaskContext,
    flow_id: str,
    early: EarlyTake | None,
    state: FlowState,
    call_name: str,
    call: Callable[[OktopostClient, str, Flow, float], T],
    on_answer: Callable[[_Job, T, int], TaskOutcome],
    refusal_code: Callable[[RefusedError], str] = lambda refused: refused.code,
) -> TaskOutcome:
    """Take the flow, call Oktopost until the deadline, end with exactly one transition."""
    answered: list[Grant] = []  # budget slots of calls that answered: their end is recorded last
    owner = early.owner if early is not None else secrets.token_hex(16)
    with context.metrics.batch():
        taken, asked = _take(context, flow_id, owner, state) if early is None else early.taken()
        if taken.outcome is TakeOutcome.BUSY:
            log.info("flow %s is being worked on by another task", flow_id)
        if taken.flow is None:
            return _recorded(context, TaskOutcome.SKIPPED)
        tracing.describe(taken.flow)  # on the task's span, when traces are on
        account = context.store.account_of(taken.flow)
        upstream = context.upstreams.get(account)
        if upstream is None:  # its tenant's account left the configuration while the flow was under way
            return _unconfigured(context, taken.flow, owner, account)
        with _then_finish(upstream.budget, answered, asked), context.leases.hold(flow_id, owner) as held:
            job = _Job(context, taken.flow, held, upstream, answered, asked, taken.token)
            if taken.token is None:
                return _give_up(job)
            token = taken.token
            client = upstream.client
            try:
                answer, attempts = call_until_deadline(
                    _observed(job, call_name, lambda timeout: call(client, token, job.flow, timeout)),
                    job.flow.deadline,
                    policy=context.policy,
                    clock=context.store.clock.now,
                    on_retry=_on_retry(job),
                    admit=_admission(job, answered),
                )
            except WorkLost:
                log.warning("flow %s was taken up by another task; this one stops", flow_id)
                return _recorded(context, TaskOutcome.SKIPPED)
            except NoBudgetNow as waiting:
                return _park(job, waiting)
            except AccountBlocked as blocked:  # Oktopost's block outlives the token: no call is made
                return _give_up(job, blocked, reason=blocked.reason)
            except (DeadlineReached, NoBudgetInTime) as reached:
                return _give_up(job, reached)
            except TokenInvalidError as refused:
                if _near_the_end_of_its_life(job):
                    return _give_up(job, refused)
                return _fail(job, refused, code=refusal_code(refused))
            except RefusedError as refused:
                return _fail(job, refused, code=refusal_code(refused))
            return on_answer(job, answer, attempts)


def _take(context: TaskContext, flow_id: str, owner: str, state: FlowState) -> tuple[Taken, list[Asked]]:
    """The flow's work, and with it the budget's answer for its first call, in one Redis call, when the
    flow is of the default account (the account of every flow but in a deployment of several)."""
    ask, waiter = _first_ask(context)
    taken = context.store.take_work(flow_id, owner, state, ask)
    return taken, _asked(taken, waiter)


def _asked(taken: Taken, waiter: str) -> list[Asked]:
    """The first call's ask that a take made (`waiter` its id), none when it made none."""
    return [] if taken.asked is None else [Asked(waiter, taken.asked)]


def _first_ask(context: TaskContext) -> tuple[BudgetAsk | None, str]:
    """The ask of a flow's first call for its take to make, when the process has a default account."""
    guess = context.upstreams.get(context.store.default_account)
    if guess is None:
        return None, ""
    policy = context.policy
    return guess.budget.first_ask(policy.min_attempt_seconds, policy.max_attempt_seconds + 1)


def _admission(job: _Job, answered: list[Grant]) -> Admission:
    """Each attempt waits for a slot of the shared budget, earliest deadline first.

    A wait longer than PARK_AFTER_SECONDS raises NoBudgetNow: the task parks the flow and ends. The
    first attempt of a task whose flow was released from parking uses the slot it was released with.
    A failed attempt's slot is scored by its end at once; one that answered goes to `answered`, and its
    end is recorded by the flow's transition, in the same call (see `_aftermath`), or after it when the
    transition is not made. A wait for budget ends as soon as the flow is lost to another task.
    """
    policy = job.context.policy
    slots = [job.flow.budget_slot] if job.flow.budget_slot else []
    return lambda: job.upstream.budget.call(
        priority=job.flow.deadline,
        give_up_at=job.flow.deadline - policy.min_attempt_seconds,
        hold=policy.max_attempt_seconds + 1,
        heartbeat=job.held.check,
        defer_end_to=answered,
        park_after=PARK_AFTER_SECONDS,
        slot=slots.pop() if slots else "",
        asked=job.asked.pop() if job.asked else None,
    )


def _park(job: _Job, waiting: NoBudgetNow) -> TaskOutcome:
    """The flow waits for its account's budget in Redis, not in this thread; a worker's unparker queues
    its task again when a slot frees (worker.upstream.parking)."""
    parked = job.context.store.park(
        job.flow, job.owner, job.upstream.budget.names, waiting.waiter, waiting.wait
    )
    if not parked:
        return _recorded(job.context, TaskOutcome.SKIPPED)
    log.info("flow %s waits %.2fs for the account's budget, parked", job.flow.flow_id, waiting.wait)
    return _recorded(job.context, TaskOutcome.PARKED)


@contextmanager
def _then_finish(budget: UpstreamBudget, answered: list[Grant], asked: list[Asked]) -> Iterator[None]:
    try:
        yield
    finally:
        budget.finished_all(answered)
        for unused in asked:  # no call was made (the flow was lost, or the worker stops)
            budget.unused(unused)


def _unconfigured(context: TaskContext, flow: Flow, owner: str, account: str) -> TaskOutcome:
    """No credentials for the flow's account in this worker: a deploy that adds a tenant may have started
    the shim (or other workers) with it before this worker. The flow is parked under its account, for
    the unparker of a worker that knows the account; while none does (the account left the
    configuration, or its workers have not started yet), it waits until STRANDED_MARGIN_SECONDS before its
    deadline, when any unparker fails it (worker.upstream.parking)."""
    names = context.store.names.account(account)
    if not context.store.park(flow, owner, names, "", UNKNOWN_ACCOUNT_WAIT):
        return _recorded(context, TaskOutcome.SKIPPED)
    log.warning(
        "flow %s: Oktopost account %s is not configured here; parked for a worker that knows it",
        flow.flow_id,
        account,
    )
    return _recorded(context, TaskOutcome.PARKED)


def _near_the_end_of_its_life(job: _Job) -> bool:
    """Oktopost refuses an expired token exactly as an unknown one ("Token is invalid or has expired"),
    and its clock starts when it issues the token, a little before our callback starts ours. A refusal
    in the last quarter of the token's life (TOKEN_TTL_SECONDS) is taken for what it almost surely is:
    the token ran out, and the flow ends as expired, not as failed."""
    store = job.context.store
    return job.flow.seconds_left(store.clock.now()) < TOKEN_END_OF_LIFE * store.lifetimes.token_ttl


def _verified(job: _Job, answer: VerifiedProfile | EntityChoice, attempts: int) -> TaskOutcome:
    if isinstance(answer, VerifiedProfile):
        return _complete(job, [answer.credential], attempts)
    offers = [EntityOffer(**entity.model_dump()) for entity in answer.entities]
    after = _aftermath(job, outcome_fields(TaskOutcome.SELECTION_REQUIRED))
    # the completion uses the token verify's answer gives for it (the reference's Step 3: "needed to
    # complete the connection in the next step"), kept only when it is not the callback's own
    token = answer.token if answer.token != job.token else None
    transition = job.context.store.offer_selection(job.flow, offers, job.owner, after=after, token=token)
    if not transition.done:
        return _not_ours(job, transition)
    _handed_over(job)
    log.info("flow %s offers %d entities after %d attempt(s)", job.flow.flow_id, len(offers), attempts)
    return TaskOutcome.SELECTION_REQUIRED


def expire_flow(store: FlowStore, flow_id: str, metrics: WorkerMetrics | None = None) -> TaskOutcome:
    """The sweeper's part: ends a flow whose deadline has passed, whatever stage it is in. One that a
    worker had to finish (verifying, completing) counts in `metrics` as a task's expiry does."""
    flow = store.get(flow_id)
    if flow is None or flow.state.terminal:
        store.forget_deadline(flow_id)
        return TaskOutcome.SKIPPED
    if not store.expire(flow).done:
        return TaskOutcome.SKIPPED
    count_expired(metrics, flow)
    return TaskOutcome.EXPIRED


def count_expired(metrics: WorkerMetrics | None, flow: Flow) -> None:
    """A flow ended `expired` by no task of its own (the sweeper, the unparker): counted with the tasks'
    expiries (okc_worker_outcomes_total{outcome="expired"}) when a worker had it to finish."""
    if metrics is not None and flow.state in WORKING_STATES:
        metrics.outcome(TaskOutcome.EXPIRED.value)


def _observed(job: _Job, call_name: str, call: Callable[[float], T]) -> Callable[[float], T]:
    """One attempt, unless the flow was lost meanwhile: timed and counted."""
    metrics = job.context.metrics

    def attempt(timeout: float) -> T:
        job.held.check()
        started = time.perf_counter()
        try:
            result = call(timeout)
        except OktopostError as error:
            metrics.upstream(call_name, type(error).__name__, time.perf_counter() - started)
            raise
        metrics.upstream(call_name, "ok", time.perf_counter() - started)
        return result

    return attempt


def _on_retry(job: _Job) -> Callable[[OktopostError, float], None]:
    def on_retry(error: OktopostError, sleep_seconds: float) -> None:
        log.warning("flow %s: %s; next attempt in %.2fs", job.flow.flow_id, error, sleep_seconds)
        job.context.metrics.retry(type(error).__name__)

    return on_retry


def _complete(job: _Job, credentials: list[Credential], attempts: int) -> TaskOutcome:
    connected = [_connected(credential) for credential in credentials]
    after = _aftermath(job, outcome_fields(TaskOutcome.COMPLETED), _time_to_terminal(job))
    transition = job.context.store.complete(job.flow, connected, job.owner, after=after)
    if not transition.done:
        return _not_ours(job, transition)
    _handed_over(job)
    log.info("flow %s completed after %d attempt(s)", job.flow.flow_id, attempts)
    return TaskOutcome.COMPLETED


def _give_up(job: _Job, reached: Exception | None = None, reason: ExpiredReason | None = None) -> TaskOutcome:
    if reached is not None:
        log.warning("flow %s expires in stage %s: %s", job.flow.flow_id, job.flow.state.stage, reached)
    after = _aftermath(job, outcome_fields(TaskOutcome.EXPIRED), _time_to_terminal(job))
    transition = job.context.store.give_up(job.flow, job.owner, reason, after=after)
    if not transition.done:
        return _not_ours(job, transition)
    _handed_over(job)
    return TaskOutcome.EXPIRED


def _fail(job: _Job, refused: RefusedError, code: str) -> TaskOutcome:
    after = _aftermath(job, outcome_fields(TaskOutcome.FAILED), outcome_fields(code), _time_to_terminal(job))
    transition = job.context.store.fail(
        job.flow, code, str(refused), refused.attempts, job.owner, after=after
    )
    if not transition.done:
        return _not_ours(job, transition)
    _handed_over(job)
    log.warning("flow %s failed: %s (%s)", job.flow.flow_id, code, refused)
    return TaskOutcome.FAILED


def _aftermath(job: _Job, *metrics: Mapping[str, float]) -> Aftermath:
    """The end of the task's work, made in its last transition's own call rather than two more: the
    ends of its calls that answered (their budget slots) and its metric observations with `metrics`."""
    return Aftermath(
        window=job.upstream.budget.names.budget_window,
        waiters=tuple(grant.waiter for grant in job.answered),
        metrics_key=job.context.metrics.key,
        metrics=job.context.metrics.pending(*metrics),
    )


def _handed_over(job: _Job) -> None:
    """The transition made the aftermath: nothing of it is left to record."""
    job.answered.clear()
    job.context.metrics.handed_over()


def _not_ours(job: _Job, transition: Transition) -> TaskOutcome:
    """The flow moved on without this task: another took it up, or it ended meanwhile."""
    if transition.outcome is TransitionOutcome.FENCED:
        log.warning("flow %s was taken up by another task; this one's outcome is dropped", job.flow.flow_id)
    else:
        state = transition.state.value if transition.state else transition.outcome.value
        log.info("flow %s is %s already; this task's outcome is dropped", job.flow.flow_id, state)
    return _recorded(job.context, TaskOutcome.SKIPPED)


def _recorded(context: TaskContext, outcome: TaskOutcome) -> TaskOutcome:
    context.metrics.outcome(outcome.value)
    return outcome


def _time_to_terminal(job: _Job) -> dict[str, float]:
    if job.flow.callback_at is None:
        return {}
    return callback_to_terminal_fields(job.context.store.clock.now() - job.flow.callback_at)


def _connected(credential: Credential) -> ConnectedCredential:
    extra = {
        "image_link": credential.image_link,
        "network_username": credential.network_username,
        "display_name": credential.display_name,
    }
    return ConnectedCredential(
        id=credential.id,
        name=credential.name,
        status=credential.status,
        network=credential.network,
        **{name: value for name, value in extra.items() if value is not None},
    )
