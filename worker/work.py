"""What a task does with a flow: verify its token, or complete its selection, and record the outcome.

Each function takes the flow's work (nothing to do when the flow is no longer in the state it works on:
a redelivered or duplicate task), calls Oktopost through the deadline-aware retry policy and ends with
exactly one flow transition. Celery is not needed here; worker.tasks wraps these.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from worker.budget import MAX_POLL_SECONDS, Grant, NoBudgetInTime, UpstreamBudget
from worker.errors import OktopostError, RefusedError, RejectedError, TokenInvalidError
from worker.events import ConnectedCredential, EntityOffer
from worker.flow import Flow, FlowState
from worker.metrics import WorkerMetrics
from worker.oktopost import Credential, EntityChoice, OktopostClient, VerifiedProfile
from worker.retry import Admission, DeadlineReached, RetryPolicy, call_until_deadline
from worker.store import FlowStore, TakeOutcome

log = logging.getLogger(__name__)
T = TypeVar("T")
LEASE_GRACE_SECONDS = 1.0
TOKEN_END_OF_LIFE = 0.25  # the share of a token's life, at its end, in which "invalid" means expired


class TaskOutcome(StrEnum):
    """What a task did with its flow (the task's result, shown in Flower)."""

    SKIPPED = "skipped"  # the flow was not (or no longer) in the state this task works on
    COMPLETED = "completed"
    SELECTION_REQUIRED = "selection_required"
    FAILED = "failed"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a task works with; one per worker process (built by worker.runtime)."""

    store: FlowStore
    client: OktopostClient
    policy: RetryPolicy
    metrics: WorkerMetrics
    budget: UpstreamBudget


def verify_flow(context: TaskContext, flow_id: str) -> TaskOutcome:
    return _work_on(
        context,
        flow_id,
        FlowState.VERIFYING,
        "verify",
        lambda token, _flow, timeout: context.client.verify(token, timeout=timeout),
        _verified,
    )


def complete_flow(context: TaskContext, flow_id: str) -> TaskOutcome:
    return _work_on(
        context,
        flow_id,
        FlowState.COMPLETING,
        "complete",
        lambda token, flow, timeout: context.client.complete(token, flow.selected_ids, timeout=timeout),
        lambda context, flow, credentials, attempts: _complete(context, flow, credentials, attempts),
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
    state: FlowState,
    call_name: str,
    call: Callable[[str, Flow, float], T],
    on_answer: Callable[[TaskContext, Flow, T, int], TaskOutcome],
    refusal_code: Callable[[RefusedError], str] = lambda refused: refused.code,
) -> TaskOutcome:
    """Take the flow, call Oktopost until the deadline, end with exactly one transition."""
    answered: list[Grant] = []  # budget slots of calls that answered: their end is recorded last
    with context.metrics.batch(), _then_finish(context, answered):
        taken = context.store.take_work(flow_id, secrets.token_hex(16), state)
        if taken.outcome is TakeOutcome.BUSY:
            log.info("flow %s is being worked on by another task", flow_id)
        if taken.flow is None:
            return _recorded(context, TaskOutcome.SKIPPED)
        flow, token = taken.flow, taken.token
        if token is None:
            return _expire(context, flow)
        lease = _Lease(context, flow, taken.leased_until)
        try:
            answer, attempts = call_until_deadline(
                _observed(context, call_name, lambda timeout: call(token, flow, timeout), lease),
                flow.deadline,
                policy=context.policy,
                on_retry=_on_retry(context, flow, lease),
                admit=_admission(context, flow, answered),
            )
        except (DeadlineReached, NoBudgetInTime) as reached:
            return _expire(context, flow, reached)
        except TokenInvalidError as refused:
            if _near_the_end_of_its_life(context, flow):
                return _expire(context, flow, refused)
            return _fail(context, flow, refused, code=refusal_code(refused))
        except RefusedError as refused:
            return _fail(context, flow, refused, code=refusal_code(refused))
        return on_answer(context, flow, answer, attempts)


def _admission(context: TaskContext, flow: Flow, answered: list[Grant]) -> Admission:
    """Each attempt waits for a slot of the shared budget, earliest deadline first.

    A failed attempt's slot is scored by its end at once; one that answered goes to `answered`, and its
    end is recorded after the flow's transition (see `_work_on`), off the path from callback to terminal
    event.
    """
    lease = context.store.lifetimes.lease

    def keep_lease() -> None:  # waiting for budget is progress too: the sweeper must not requeue
        context.store.renew_lease(flow.flow_id, time.time() + lease + MAX_POLL_SECONDS)

    return lambda: context.budget.call(
        priority=flow.deadline,
        give_up_at=flow.deadline - context.policy.min_attempt_seconds,
        hold=context.policy.max_attempt_seconds + 1,
        heartbeat=keep_lease,
        defer_end_to=answered,
    )


@contextmanager
def _then_finish(context: TaskContext, answered: list[Grant]) -> Iterator[None]:
    try:
        yield
    finally:
        context.budget.finished_all(answered)


def _near_the_end_of_its_life(context: TaskContext, flow: Flow) -> bool:
    """Oktopost refuses an expired token exactly as an unknown one ("Token is invalid or has expired"),
    and its clock starts when it issues the token, a little before our callback starts ours. A refusal
    in the last quarter of the token's life (TOKEN_TTL_SECONDS) is taken for what it almost surely is:
    the token ran out, and the flow ends as expired, not as failed."""
    return flow.seconds_left() < TOKEN_END_OF_LIFE * context.store.lifetimes.token_ttl


def _verified(
    context: TaskContext, flow: Flow, answer: VerifiedProfile | EntityChoice, attempts: int
) -> TaskOutcome:
    if isinstance(answer, VerifiedProfile):
        return _complete(context, flow, [answer.credential], attempts)
    offers = [EntityOffer(**entity.model_dump()) for entity in answer.entities]
    transition = context.store.offer_selection(flow, offers)
    log.info("flow %s offers %d entities after %d attempt(s)", flow.flow_id, len(offers), attempts)
    return _recorded(context, TaskOutcome.SELECTION_REQUIRED if transition.done else TaskOutcome.SKIPPED)


def expire_flow(store: FlowStore, flow_id: str, now: float | None = None) -> TaskOutcome:
    """The sweeper's part: ends a flow whose deadline has passed, whatever stage it is in."""
    flow = store.get(flow_id)
    if flow is None or flow.state.terminal:
        store.forget_deadline(flow_id)
        return TaskOutcome.SKIPPED
    return TaskOutcome.EXPIRED if store.expire(flow, now).done else TaskOutcome.SKIPPED


def _observed(
    context: TaskContext, call_name: str, call: Callable[[float], T], lease: _Lease
) -> Callable[[float], T]:
    """One attempt: renew the flow's lease for as long as the attempt may take, time it, count it."""

    def attempt(timeout: float) -> T:
        lease.keep(busy_for=timeout)
        started = time.perf_counter()
        try:
            result = call(timeout)
        except OktopostError as error:
            context.metrics.upstream(call_name, type(error).__name__, time.perf_counter() - started)
            raise
        context.metrics.upstream(call_name, "ok", time.perf_counter() - started)
        return result

    return attempt


class _Lease:
    """The task's lease on its flow, renewed before each call or wait that it would not cover."""

    def __init__(self, context: TaskContext, flow: Flow, until: float) -> None:
        self.context = context
        self.flow = flow
        self.until = until  # the lease the task holds now (take_work set it)

    def keep(self, busy_for: float) -> None:
        """The worker shows progress again within `busy_for` seconds (a call's timeout, a backoff).

        The lease runs from its renewal, not from the end of that wait: a worker killed mid-call must
        lose the flow within the lease (a quarter of the token's life, as promised), not a call's
        timeout later. Only a single call or wait longer than the lease stretches it, with a little
        grace so that the sweeper does not take a flow from a worker about to show progress.
        A lease that still covers the wait is left as it is (it only ends sooner than a renewed one
        would, never later): a task's first call goes out under the lease set by taking the flow.
        """
        now = time.time()
        if self.until >= now + busy_for + LEASE_GRACE_SECONDS:
            return
        self.until = now + max(busy_for + LEASE_GRACE_SECONDS, self.context.store.lifetimes.lease)
        self.context.store.renew_lease(self.flow.flow_id, self.until)


def _on_retry(context: TaskContext, flow: Flow, lease: _Lease) -> Callable[[OktopostError, float], None]:
    def on_retry(error: OktopostError, sleep_seconds: float) -> None:
        log.warning("flow %s: %s; next attempt in %.2fs", flow.flow_id, error, sleep_seconds)
        context.metrics.retry(type(error).__name__)
        lease.keep(busy_for=sleep_seconds)

    return on_retry


def _complete(context: TaskContext, flow: Flow, credentials: list[Credential], attempts: int) -> TaskOutcome:
    transition = context.store.complete(flow, [_connected(credential) for credential in credentials])
    if not transition.done:
        return _recorded(context, TaskOutcome.SKIPPED)
    log.info("flow %s completed after %d attempt(s)", flow.flow_id, attempts)
    _time_to_terminal(context, flow)
    return _recorded(context, TaskOutcome.COMPLETED)


def _expire(context: TaskContext, flow: Flow, reached: Exception | None = None) -> TaskOutcome:
    if reached is not None:
        log.warning("flow %s expires in stage %s: %s", flow.flow_id, flow.state.stage, reached)
    if not context.store.expire(flow, doomed=True).done:
        return _recorded(context, TaskOutcome.SKIPPED)
    _time_to_terminal(context, flow)
    return _recorded(context, TaskOutcome.EXPIRED)


def _fail(context: TaskContext, flow: Flow, refused: RefusedError, code: str | None = None) -> TaskOutcome:
    code = code or refused.code
    log.warning("flow %s failed: %s (%s)", flow.flow_id, code, refused)
    attempts = refused.attempts
    if not context.store.fail(flow, code, str(refused), retryable=False, attempts=attempts).done:
        return _recorded(context, TaskOutcome.SKIPPED)
    _time_to_terminal(context, flow)
    context.metrics.outcome(code)
    return TaskOutcome.FAILED


def _recorded(context: TaskContext, outcome: TaskOutcome) -> TaskOutcome:
    context.metrics.outcome(outcome.value)
    return outcome


def _time_to_terminal(context: TaskContext, flow: Flow) -> None:
    if flow.callback_at is not None:
        context.metrics.callback_to_terminal(time.time() - flow.callback_at)


def _connected(credential: Credential) -> ConnectedCredential:
    extra = {"image_link": credential.image_link, "network_username": credential.network_username}
    return ConnectedCredential(
        id=credential.id,
        name=credential.name,
        status=credential.status,
        network=credential.network,
        **{name: value for name, value in extra.items() if value is not None},
    )
