"""What a task does with a flow: verify its token, or complete its selection, and record the outcome.

Each function loads the flow, does nothing when the flow is no longer in the state it works on (a
redelivered or duplicate task), calls Oktopost through the deadline-aware retry policy and ends with
exactly one flow-store step. Celery is not needed here; worker.tasks wraps these.
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
from worker.flows import Flow, FlowState, FlowStore, TakeOutcome
from worker.metrics import WorkerMetrics
from worker.oktopost import Credential, EntityChoice, OktopostClient, VerifiedProfile
from worker.retry import Admission, DeadlineReached, RetryPolicy, call_until_deadline

log = logging.getLogger(__name__)
T = TypeVar("T")
LEASE_GRACE_SECONDS = 1.0
TOKEN_END_OF_LIFE = 0.25  # the share of a token's life, at its end, in which "invalid" means expired


class Outcome(StrEnum):
    SKIPPED = "skipped"  # the flow was not (or no longer) in the state this step works on
    COMPLETED = "completed"
    SELECTION_REQUIRED = "selection_required"
    FAILED = "failed"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Worker:
    """What a step works with; one per worker process (see worker.runtime)."""

    store: FlowStore
    client: OktopostClient
    policy: RetryPolicy
    metrics: WorkerMetrics
    budget: UpstreamBudget

    def admission(self, flow: Flow, answered: list[Grant]) -> Admission:
        """Each attempt waits for a slot of the shared budget, earliest deadline first.

        A failed attempt's slot is scored by its end at once; one that answered goes to `answered`,
        and its end is recorded after the flow's step (see `_work_on`), off the path from callback to
        terminal event.
        """
        lease = self.store.lifetimes.lease

        def keep_lease() -> None:  # waiting for budget is progress too: the sweeper must not requeue
            self.store.renew_lease(flow.flow_id, time.time() + lease + MAX_POLL_SECONDS)

        return lambda: self.budget.call(
            priority=flow.deadline,
            give_up_at=flow.deadline - self.policy.min_attempt_seconds,
            hold=self.policy.max_attempt_seconds + 1,
            heartbeat=keep_lease,
            defer_end_to=answered,
        )


def verify_flow(worker: Worker, flow_id: str) -> Outcome:
    return _work_on(
        worker,
        flow_id,
        FlowState.VERIFYING,
        "verify",
        lambda token, flow, timeout: worker.client.verify(token, timeout=timeout),
        _verified,
    )


def complete_flow(worker: Worker, flow_id: str) -> Outcome:
    return _work_on(
        worker,
        flow_id,
        FlowState.COMPLETING,
        "complete",
        lambda token, flow, timeout: worker.client.complete(token, flow.selected_ids, timeout=timeout),
        lambda worker, flow, credentials, attempts: _complete(worker, flow, credentials, attempts),
        # Oktopost refusing ids we offered from its own list means the selection no longer holds
        refusal_code=lambda refused: (
            "invalid_selection"
            if isinstance(refused, RejectedError) and not isinstance(refused, TokenInvalidError)
            else refused.code
        ),
    )


def _work_on(
    worker: Worker,
    flow_id: str,
    state: FlowState,
    call_name: str,
    call: Callable[[str, Flow, float], T],
    on_answer: Callable[[Worker, Flow, T, int], Outcome],
    refusal_code: Callable[[RefusedError], str] = lambda refused: refused.code,
) -> Outcome:
    """Take the flow, call Oktopost until the deadline, end with exactly one step."""
    answered: list[Grant] = []  # budget slots of calls that answered: their end is recorded last
    with worker.metrics.batch(), _then_finish(worker, answered):
        taken = worker.store.take_work(flow_id, secrets.token_hex(16), state)
        if taken.outcome is TakeOutcome.BUSY:
            log.info("flow %s is being worked on by another task", flow_id)
        if taken.flow is None:
            return _recorded(worker, Outcome.SKIPPED)
        flow, token = taken.flow, taken.token
        if token is None:
            return _expire(worker, flow)
        lease = _Lease(worker, flow, taken.leased_until)
        try:
            answer, attempts = call_until_deadline(
                _observed(worker, flow, call_name, lambda timeout: call(token, flow, timeout), lease),
                flow.deadline,
                policy=worker.policy,
                on_retry=_on_retry(worker, flow, lease),
                admit=worker.admission(flow, answered),
            )
        except (DeadlineReached, NoBudgetInTime) as reached:
            return _expire(worker, flow, reached)
        except TokenInvalidError as refused:
            if _near_the_end_of_its_life(worker, flow):
                return _expire(worker, flow, refused)
            return _fail(worker, flow, refused, code=refusal_code(refused))
        except RefusedError as refused:
            return _fail(worker, flow, refused, code=refusal_code(refused))
        return on_answer(worker, flow, answer, attempts)


@contextmanager
def _then_finish(worker: Worker, answered: list[Grant]) -> Iterator[None]:
    try:
        yield
    finally:
        worker.budget.finished_all(answered)


def _near_the_end_of_its_life(worker: Worker, flow: Flow) -> bool:
    """Oktopost refuses an expired token exactly as an unknown one ("Token is invalid or has expired"),
    and its clock starts when it issues the token, a little before our callback starts ours. A refusal
    in the last quarter of the token's life (TOKEN_TTL_SECONDS) is taken for what it almost surely is:
    the token ran out, and the flow ends as expired, not as failed."""
    return flow.seconds_left() < TOKEN_END_OF_LIFE * worker.store.lifetimes.token_ttl


def _verified(worker: Worker, flow: Flow, answer: VerifiedProfile | EntityChoice, attempts: int) -> Outcome:
    if isinstance(answer, VerifiedProfile):
        return _complete(worker, flow, [answer.credential], attempts)
    offers = [EntityOffer(**entity.model_dump()) for entity in answer.entities]
    step = worker.store.offer_selection(flow, offers)
    log.info("flow %s offers %d entities after %d attempt(s)", flow.flow_id, len(offers), attempts)
    return _recorded(worker, Outcome.SELECTION_REQUIRED if step.done else Outcome.SKIPPED)


def expire_flow(store: FlowStore, flow_id: str, now: float | None = None) -> Outcome:
    """The sweeper's step: ends a flow whose deadline has passed, whatever stage it is in."""
    flow = store.get(flow_id)
    if flow is None or flow.state.terminal:
        store.forget_deadline(flow_id)
        return Outcome.SKIPPED
    return Outcome.EXPIRED if store.expire(flow, now).done else Outcome.SKIPPED


def _observed(
    worker: Worker, flow: Flow, call_name: str, call: Callable[[float], T], lease: _Lease
) -> Callable[[float], T]:
    """One attempt: renew the flow's lease for as long as the attempt may take, time it, count it."""

    def attempt(timeout: float) -> T:
        lease.keep(busy_for=timeout)
        started = time.perf_counter()
        try:
            result = call(timeout)
        except OktopostError as error:
            worker.metrics.upstream(call_name, type(error).__name__, time.perf_counter() - started)
            raise
        worker.metrics.upstream(call_name, "ok", time.perf_counter() - started)
        return result

    return attempt


class _Lease:
    """The task's lease on its flow, renewed before each call or wait that it would not cover."""

    def __init__(self, worker: Worker, flow: Flow, until: float) -> None:
        self.worker = worker
        self.flow = flow
        self.until = until  # the lease the task holds now (take_work set it)

    def keep(self, busy_for: float) -> None:
        """The worker shows progress again within `busy_for` seconds (a call's timeout, a backoff).

        The lease runs from its renewal, not from the end of that wait: a worker killed mid-call must
        lose the flow within the lease (a quarter of the token's life, CONTRACT section 8), not a call's
        timeout later. Only a single call or wait longer than the lease stretches it, with a little
        grace so that the sweeper does not take a flow from a worker about to show progress.
        A lease that still covers the wait is left as it is (it only ends sooner than a renewed one
        would, never later): a task's first call goes out under the lease set by taking the flow.
        """
        now = time.time()
        if self.until >= now + busy_for + LEASE_GRACE_SECONDS:
            return
        self.until = now + max(busy_for + LEASE_GRACE_SECONDS, self.worker.store.lifetimes.lease)
        self.worker.store.renew_lease(self.flow.flow_id, self.until)


def _on_retry(worker: Worker, flow: Flow, lease: _Lease) -> Callable[[OktopostError, float], None]:
    def on_retry(error: OktopostError, sleep_seconds: float) -> None:
        log.warning("flow %s: %s; next attempt in %.2fs", flow.flow_id, error, sleep_seconds)
        worker.metrics.retry(type(error).__name__)
        lease.keep(busy_for=sleep_seconds)

    return on_retry


def _complete(worker: Worker, flow: Flow, credentials: list[Credential], attempts: int) -> Outcome:
    step = worker.store.complete(flow, [_connected(credential) for credential in credentials])
    if not step.done:
        return _recorded(worker, Outcome.SKIPPED)
    log.info("flow %s completed after %d attempt(s)", flow.flow_id, attempts)
    _time_to_terminal(worker, flow)
    return _recorded(worker, Outcome.COMPLETED)


def _expire(worker: Worker, flow: Flow, reached: Exception | None = None) -> Outcome:
    if reached is not None:
        log.warning("flow %s expires in stage %s: %s", flow.flow_id, flow.state.stage, reached)
    if not worker.store.expire(flow, doomed=True).done:
        return _recorded(worker, Outcome.SKIPPED)
    _time_to_terminal(worker, flow)
    return _recorded(worker, Outcome.EXPIRED)


def _fail(worker: Worker, flow: Flow, refused: RefusedError, code: str | None = None) -> Outcome:
    code = code or refused.code
    log.warning("flow %s failed: %s (%s)", flow.flow_id, code, refused)
    attempts = refused.attempts
    if not worker.store.fail(flow, code, str(refused), retryable=False, attempts=attempts).done:
        return _recorded(worker, Outcome.SKIPPED)
    _time_to_terminal(worker, flow)
    worker.metrics.outcome(code)
    return Outcome.FAILED


def _recorded(worker: Worker, outcome: Outcome) -> Outcome:
    worker.metrics.outcome(outcome.value)
    return outcome


def _time_to_terminal(worker: Worker, flow: Flow) -> None:
    if flow.callback_at is not None:
        worker.metrics.callback_to_terminal(time.time() - flow.callback_at)


def _connected(credential: Credential) -> ConnectedCredential:
    extra = {"image_link": credential.image_link, "network_username": credential.network_username}
    return ConnectedCredential(
        id=credential.id,
        name=credential.name,
        status=credential.status,
        network=credential.network,
        **{name: value for name, value in extra.items() if value is not None},
    )
