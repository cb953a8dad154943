"""The callers' routes: start a flow (Step 1, the one upstream call the shim makes), read a flow's status,
submit the selection of entities a flow offered."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from api_shim import metrics, rules
from api_shim.deps import Deps, ShimDeps, caller
from api_shim.errors import ApiError
from api_shim.models import (
    AuthorizationCreated,
    AuthorizationRequest,
    FlowStatus,
    SelectionAccepted,
    SelectionRequest,
)
from api_shim.rules import SelectionOutcome
from api_shim.security import check_return_url
from api_shim.streams import event_stream
from worker.budget import STEP1_PRIORITY, Grant, NoBudgetInTime
from worker.errors import RefusedError, RejectedError
from worker.events import utc_timestamp
from worker.flow import FlowState
from worker.oktopost import canonical_entity_type, canonical_network
from worker.retry import DeadlineReached, RetryPolicy, acall_until_deadline

STEP1_SECONDS = 8.0  # the whole of Step 1's bounded retry: a caller is waiting on this request
STEP1_POLICY = RetryPolicy(max_attempt_seconds=4.0, backoff_max=1.0)

router = APIRouter(dependencies=[Depends(caller)])


@router.post("/v1/authorizations", status_code=201)
async def start_authorization(body: AuthorizationRequest, shim: ShimDeps) -> AuthorizationCreated:
    settings = shim.settings
    try:
        network = canonical_network(body.network)
        entity_type = canonical_entity_type(body.type)
    except ValueError as error:
        raise ApiError(422, "invalid_request", str(error)) from None
    return_url = check_return_url(body.return_url, settings.allowed_return_urls) if body.return_url else None
    flow_id = secrets.token_hex(20)  # 160 random bits; hex never starts with "-" on a command line
    callback_url = f"{settings.public_base_url}/v1/callback/{flow_id}"
    try:
        redirect_url, _ = await acall_until_deadline(
            lambda timeout: shim.client.start_authorization(
                network, callback_url, entity_type, timeout=timeout
            ),
            time.time() + STEP1_SECONDS,
            policy=STEP1_POLICY,
            admit=_step1_admission(shim),
        )
    except NoBudgetInTime as busy:
        # admission control: the shared budget is spoken for by flows already under way
        metrics.ADMISSIONS_REFUSED.inc()
        raise ApiError(
            503,
            "upstream_budget_exhausted",
            "Oktopost's rate limit is taken by flows in progress; try again shortly",
            {"Retry-After": str(max(1, math.ceil(busy.wait)))},
        ) from None
    except RejectedError as refused:
        raise ApiError(422, refused.code, str(refused)) from None
    except RefusedError as refused:
        raise ApiError(502, refused.code, str(refused)) from None
    except DeadlineReached as reached:
        raise ApiError(502, "upstream_unavailable", f"Oktopost is unavailable: {reached}") from None
    flow = await run_in_threadpool(
        shim.store.create, flow_id, network, entity_type, body.reference, return_url, body.ui
    )
    metrics.FLOWS_STARTED.labels(network=network, entity_type=entity_type).inc()
    return AuthorizationCreated(
        flow_id=flow_id,
        redirect_url=redirect_url,
        channel=shim.names.flow_channel(flow_id),
        status_url=f"{settings.public_base_url}/v1/authorizations/{flow_id}",
        expires_at=utc_timestamp(flow.deadline),
    )


def _step1_admission(shim: Deps) -> Callable[[], Awaitable[Callable[[], None]]]:
    """Each Step 1 attempt waits for a slot of the shared upstream budget, after every verification and
    completion, and for a little while only: a new flow is refused rather than kept waiting."""
    wait = max(1.0, min(STEP1_SECONDS / 2, shim.settings.token_ttl_seconds / 4))
    budget, clock = shim.budget, shim.store.clock

    def acquire() -> Grant:  # the give-up time is on Redis's clock, which the budget's script reads
        return budget.acquire(STEP1_PRIORITY, clock.now() + wait, STEP1_POLICY.max_attempt_seconds + 1)

    async def admit() -> Callable[[], None]:
        grant = await run_in_threadpool(acquire)
        return lambda: budget.finished(grant)

    return admit


@router.get("/v1/authorizations/{flow_id}")
def flow_status(flow_id: str, shim: ShimDeps) -> FlowStatus:
    flow = shim.load_flow(flow_id)
    return FlowStatus(
        flow_id=flow.flow_id,
        status=flow.state.value,
        network=flow.network,
        type=flow.entity_type,
        reference=flow.reference,
        events=shim.store.events(flow_id),
    )


@router.get(
    "/v1/authorizations/{flow_id}/events",
    response_model=None,
    responses={200: {"content": {"text/event-stream": {}}, "description": "the flow's events"}},
)
async def flow_events(flow_id: str, request: Request, shim: ShimDeps) -> Response:
    """Server-sent events: the flow's stored events, then live ones, until its terminal event; with
    `Last-Event-ID`, only the events after that seq."""
    await run_in_threadpool(shim.load_flow, flow_id)
    return event_stream(shim.events_redis, shim.names.prefix, flow_id, request)


@router.post("/v1/authorizations/{flow_id}/selection", status_code=202)
def submit_selection(flow_id: str, body: SelectionRequest, shim: ShimDeps) -> SelectionAccepted:
    selection = rules.submit_selection(shim.store, shim.enqueuer, shim.load_flow(flow_id), body.ids)
    outcome, state = selection.outcome, selection.flow.state.value
    if outcome is SelectionOutcome.FLOW_EXPIRED:
        raise ApiError(410, "flow_expired", "the flow has expired")
    if outcome is SelectionOutcome.WRONG_STATE:
        raise ApiError(409, "wrong_state", f"the flow is {state}, not {FlowState.AWAITING_SELECTION.value}")
    if outcome is SelectionOutcome.TOKEN_EXPIRED:
        raise ApiError(410, "token_expired", "the authorization token has expired")
    if not selection.queued:  # nothing selected is refused by the body's model already
        unknown = ", ".join(selection.ids[:5])
        raise ApiError(422, "invalid_selection", f"not offered to this flow: {unknown}")
    return SelectionAccepted(flow_id=flow_id, status=FlowState.COMPLETING.value, ids=selection.ids)
