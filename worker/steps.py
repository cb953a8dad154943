"""What a task does with a flow: verify its token, or complete its selection, and record the outcome.

Each function loads the flow, does nothing when the flow is no longer in the state it works on (a
redelivered or duplicate task), calls Oktopost through the deadline-aware retry policy and ends with
exactly one flow-store step. Celery is not needed here; worker.tasks wraps these.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

from worker.errors import OktopostError, RefusedError, RejectedError, TokenInvalidError
from worker.events import ConnectedCredential, EntityOffer
from worker.flows import Flow, FlowState, FlowStore
from worker.oktopost import Credential, EntityChoice, OktopostClient
from worker.retry import DeadlineReached, RetryPolicy, call_until_deadline

log = logging.getLogger(__name__)
T = TypeVar("T")


class Outcome(StrEnum):
    SKIPPED = "skipped"  # the flow was not (or no longer) in the state this step works on
    COMPLETED = "completed"
    SELECTION_REQUIRED = "selection_required"
    FAILED = "failed"
    EXPIRED = "expired"


def verify_flow(store: FlowStore, client: OktopostClient, flow_id: str, policy: RetryPolicy) -> Outcome:
    flow = store.get(flow_id)
    if flow is None or flow.state is not FlowState.VERIFYING:
        return Outcome.SKIPPED
    token = store.token(flow_id)
    if token is None:
        return _expire(store, flow)
    try:
        answer, attempts = call_until_deadline(
            _leased(store, flow, lambda timeout: client.verify(token, timeout=timeout)),
            flow.deadline,
            policy=policy,
            on_retry=_renewing_lease(store, flow),
        )
    except DeadlineReached as reached:
        return _expire(store, flow, reached)
    except RefusedError as refused:
        return _fail(store, flow, refused, attempts=_attempts(refused))
    if isinstance(answer, EntityChoice):
        offers = [
            EntityOffer(
                id=entity.id,
                name=entity.name,
                network=entity.network,
                image_link=entity.image_link,
                network_username=entity.network_username,
                is_connected=entity.is_connected,
            )
            for entity in answer.entities
        ]
        step = store.offer_selection(flow, offers)
        return Outcome.SELECTION_REQUIRED if step.done else Outcome.SKIPPED
    step = store.complete(flow, [_connected(answer.credential)])
    log.info("flow %s verified after %d attempt(s)", flow_id, attempts)
    return Outcome.COMPLETED if step.done else Outcome.SKIPPED


def complete_flow(store: FlowStore, client: OktopostClient, flow_id: str, policy: RetryPolicy) -> Outcome:
    flow = store.get(flow_id)
    if flow is None or flow.state is not FlowState.COMPLETING:
        return Outcome.SKIPPED
    token = store.token(flow_id)
    if token is None:
        return _expire(store, flow)
    try:
        credentials, attempts = call_until_deadline(
            _leased(store, flow, lambda timeout: client.complete(token, flow.selected_ids, timeout=timeout)),
            flow.deadline,
            policy=policy,
            on_retry=_renewing_lease(store, flow),
        )
    except DeadlineReached as reached:
        return _expire(store, flow, reached)
    except RefusedError as refused:
        code = refused.code
        if isinstance(refused, RejectedError) and not isinstance(refused, TokenInvalidError):
            code = "invalid_selection"
        return _fail(store, flow, refused, attempts=_attempts(refused), code=code)
    step = store.complete(flow, [_connected(credential) for credential in credentials])
    log.info("flow %s completed after %d attempt(s)", flow_id, attempts)
    return Outcome.COMPLETED if step.done else Outcome.SKIPPED


def expire_flow(store: FlowStore, flow_id: str, now: float | None = None) -> Outcome:
    """The sweeper's step: ends a flow whose deadline has passed, whatever stage it is in."""
    flow = store.get(flow_id)
    if flow is None or flow.state.terminal:
        store.forget_deadline(flow_id)
        return Outcome.SKIPPED
    return Outcome.EXPIRED if store.expire(flow, now).done else Outcome.SKIPPED


def _leased(store: FlowStore, flow: Flow, call: Callable[[float], T]) -> Callable[[float], T]:
    """Before each attempt, tells the sweeper this flow's work is alive for as long as the attempt may take."""

    def attempt(timeout: float) -> T:
        store.renew_lease(flow.flow_id, time.time() + timeout + store.lifetimes.lease)
        return call(timeout)

    return attempt


def _renewing_lease(store: FlowStore, flow: Flow) -> Callable[[OktopostError, float], None]:
    def on_retry(error: OktopostError, sleep_seconds: float) -> None:
        log.warning("flow %s: %s; next attempt in %.2fs", flow.flow_id, error, sleep_seconds)
        store.renew_lease(flow.flow_id, time.time() + sleep_seconds + store.lifetimes.lease)

    return on_retry


def _expire(store: FlowStore, flow: Flow, reached: DeadlineReached | None = None) -> Outcome:
    if reached is not None:
        log.warning("flow %s expires in stage %s: %s", flow.flow_id, flow.state.stage, reached)
    return Outcome.EXPIRED if store.expire(flow, doomed=True).done else Outcome.SKIPPED


def _fail(store: FlowStore, flow: Flow, refused: RefusedError, attempts: int, code: str | None = None) -> Outcome:
    code = code or refused.code
    log.warning("flow %s failed: %s (%s)", flow.flow_id, code, refused)
    step = store.fail(flow, code, str(refused), retryable=False, attempts=attempts)
    return Outcome.FAILED if step.done else Outcome.SKIPPED


def _attempts(error: BaseException) -> int:
    return int(getattr(error, "attempts", 1))


def _connected(credential: Credential) -> ConnectedCredential:
    return ConnectedCredential(
        id=credential.id, name=credential.name, status=credential.status, network=credential.network
    )
