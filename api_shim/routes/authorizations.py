"""The callers' routes: start a flow (Step 1, the one upstream call the shim makes), read a flow's status,
submit the selection of entities a flow offered."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from api_shim import languages, metrics, rules
from api_shim.deps import CallerTenant, Deps, ShimDeps, caller
from api_shim.errors import ApiError
from api_shim.models import (
    AuthorizationCreated,
    AuthorizationRequest,
    FlowStatus,
    SelectionAccepted,
    SelectionRequest,
)
from api_shim.openapi import errors, server_sent_events
from api_shim.rules import SelectionOutcome
from api_shim.security import check_return_url
from api_shim.streams import key_digest
from worker.events import utc_timestamp
from worker.flows.flow import BrowserUI, FlowState
from worker.observing import tracing
from worker.oktopost import AsyncOktopostClient, canonical_entity_type, canonical_network
from worker.oktopost.errors import RefusedError, RejectedError
from worker.upstream.account import admission_member, retry_after_header
from worker.upstream.budget import STEP1_PRIORITY, AccountPaused, DailyLimitSpent, NoBudgetInTime
from worker.upstream.clients import Upstream
from worker.upstream.retry import DeadlineReached, RetryPolicy, acall_until_deadline

STEP1_SECONDS = 8.0  # the whole of Step 1's bounded retry: a caller is waiting on this request
# full-jitter backoff from 0.25 s up to 3 s: 7 to 14 attempts in those 8 s while Oktopost keeps failing
# (each a call of the account's minute; 14 to 25 with 0.1 s up to 1 s), yet a flaky answer rarely costs
# the caller a 502
STEP1_POLICY = RetryPolicy(max_attempt_seconds=4.0, backoff_multiplier=0.25, backoff_max=3.0)

log = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(caller)])


@router.post(
    "/v1/authorizations",
    status_code=201,
    responses=errors(
        422,
        502,
        503,
        meanings={
            422: "an invalid body, a return_url not allowed, or Oktopost refused the flow",
            503: "Oktopost's budget for the account is spoken for, or storage is away; see Retry-After",
        },
    ),
)
async def start_authorization(
    body: AuthorizationRequest, shim: ShimDeps, tenant_name: CallerTenant
) -> AuthorizationCreated:
    return await start_flow(body, shim, tenant_name)


async def start_flow(
    body: AuthorizationRequest, shim: Deps, tenant_name: str, reconnects: str | None = None
) -> AuthorizationCreated:
    """A new flow of the tenant: Step 1, then the flow (`reconnects`: the connection it connects again)."""
    settings, tenant = shim.settings, shim.tenant(tenant_name)
    try:
        network = canonical_network(body.network)
        entity_type = canonical_entity_type(body.type)
    except ValueError as error:
        raise ApiError(422, "invalid_request", str(error)) from None
    if body.ui is BrowserUI.POPUP and not body.return_url:
        message = "a popup flow needs a return_url: its origin is where the popup posts the result"
        raise ApiError(422, "return_url_required", message)
    return_url = check_return_url(body.return_url, tenant.allowed_return_urls) if body.return_url else None
    locale = _locale(body.locale)
    flow_id = secrets.token_hex(20)  # 160 random bits; hex never starts with "-" on a command line
    tracing.describe_flow_id(flow_id)  # on the request's span (the flow trace's root), and on Step 1's
    callback_url = f"{settings.public_base_url}/v1/callback/{flow_id}"
    admission = Admission(admission_member(flow_id, entity_type))
    upstream = shim.upstream(tenant)  # the tenant's Oktopost account: its client and its budget
    try:
        redirect_url = await _step1(shim, upstream, network, entity_type, callback_url, admission)
        flow = await run_in_threadpool(
            lambda: shim.store.create(
                flow_id,
                network,
                entity_type,
                body.reference,
                return_url,
                body.ui,
                tenant=tenant.name,
                account=upstream.account_id,
                caller_state=body.state,
                redirect_url=redirect_url,
                reconnects=reconnects,
                locale=locale,
            )
        )
    finally:  # the flow, once created, holds what it still needs; a refused one needs nothing
        if admission.reserved:  # (no grant, no reservation: a Redis away is not asked twice)
            await run_in_threadpool(_release, upstream, admission.member)
    tracing.describe(flow)
    metrics.FLOWS_STARTED.labels(network=network, entity_type=entity_type).inc()
    return AuthorizationCreated(
        flow_id=flow_id,
        redirect_url=redirect_url,
        start_url=f"{settings.public_base_url}/v1/start/{flow_id}",
        channel=shim.names.flow_channel(flow_id),
        status_url=f"{settings.public_base_url}/v1/authorizations/{flow_id}",
        expires_at=utc_timestamp(flow.deadline),
    )


def _locale(requested: str | None) -> str:
    """The language the flow's hosted pages speak ("": the browser's), or 422 for one they do not."""
    if requested is None:
        return ""
    language = languages.supported(requested)
    if language is None:
        spoken = ", ".join(languages.LANGUAGES)
        raise ApiError(422, "unsupported_locale", f"locale must be one of {spoken}")
    return language


@dataclass
class Admission:
    """A new flow's reservation of its later calls of the day, made with Step 1's first grant."""

    member: str
    reserved: bool = False


async def _step1(
    shim: Deps,
    upstream: Upstream[AsyncOktopostClient],
    network: str,
    entity_type: str,
    callback_url: str,
    admission: Admission,
) -> str:
    """Step 1 under the account's shared budget, or the ApiError that tells the caller why not and when
    to retry."""
    try:
        redirect_url, _ = await acall_until_deadline(
            lambda timeout: upstream.client.start_authorization(
                network, callback_url, entity_type, timeout=timeout
            ),
            time.time() + STEP1_SECONDS,
            policy=STEP1_POLICY,
            admit=_step1_admission(shim, upstream, admission),
        )
    except AccountPaused as paused:
        metrics.ADMISSIONS_REFUSED.inc()
        message = "Oktopost has the account blocked after a 429; calls resume by themselves"
        raise ApiError(503, "upstream_blocked", message, retry_after_header(paused.wait)) from None
    except DailyLimitSpent as spent:
        metrics.ADMISSIONS_REFUSED.inc()
        message = "the account's daily calls to Oktopost are spoken for until midnight UTC"
        raise ApiError(503, "daily_limit_reached", message, retry_after_header(spent.wait)) from None
    except NoBudgetInTime as busy:
        # admission control: the shared budget is spoken for by flows already under way
        metrics.ADMISSIONS_REFUSED.inc()
        raise ApiError(
            503,
            "upstream_budget_exhausted",
            "Oktopost's rate limit is taken by flows in progress; try again shortly",
            retry_after_header(busy.wait),
        ) from None
    except RejectedError as refused:
        raise ApiError(422, refused.code, str(refused)) from None
    except RefusedError as refused:
        raise ApiError(502, refused.code, str(refused)) from None
    except DeadlineReached as reached:
        raise ApiError(502, "upstream_unavailable", f"Oktopost is unavailable: {reached}") from None
    return redirect_url


def _step1_admission(
    shim: Deps, upstream: Upstream[AsyncOktopostClient], admission: Admission
) -> Callable[[], Awaitable[Callable[[BaseException | None], None]]]:
    """Each Step 1 attempt waits for a slot of the shared upstream budget, after every verification and
    completion, and for a little while only: a new flow is refused rather than kept waiting. The first
    one granted reserves the new flow's later calls of the day (`admission`)."""
    wait = max(1.0, min(STEP1_SECONDS / 2, shim.settings.token_ttl_seconds / 4))
    budget, clock = upstream.budget, shim.store.clock

    async def admit() -> Callable[[BaseException | None], None]:
        # the waits between asks are the event loop's: a burst of Step 1s waiting for one account's
        # budget holds no thread of the pool every route shares (each ask is one short Redis call)
        hold = STEP1_POLICY.max_attempt_seconds + 1
        grant = await budget.acquire_async(
            STEP1_PRIORITY,
            lambda: clock.now() + wait,  # on Redis's clock, which the budget's script reads
            hold,
            run_in_threadpool,
            admission=admission.member,
        )
        admission.reserved = True
        return lambda error: budget.finished(grant, error)

    return admit


def _release(upstream: Upstream[AsyncOktopostClient], admission: str) -> None:
    try:
        upstream.budget.account.release_admission(admission)
    except redis.RedisError:  # its reservation lapses by itself within a minute
        log.warning("a new flow's reserved calls were not given back: Redis did not answer")


@router.get("/v1/authorizations/{flow_id}", responses=errors(404))
def flow_status(flow_id: str, shim: ShimDeps, tenant: CallerTenant) -> FlowStatus:
    flow = shim.load_flow(flow_id, tenant)
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
    response_class=Response,
    responses={**server_sent_events("the flow's events, until its terminal one"), **errors(404, 429)},
)
async def flow_events(flow_id: str, request: Request, shim: ShimDeps, tenant: CallerTenant) -> Response:
    """Server-sent events: the flow's stored events, then live ones, until its terminal event; with
    `Last-Event-ID`, only the events after that seq. 429 past SSE_MAX_PER_FLOW or SSE_MAX_PER_KEY."""
    await run_in_threadpool(shim.load_flow, flow_id, tenant)
    key = request.headers.get("authorization", "").partition(" ")[2].strip()
    return await shim.streams.open(flow_id, key_digest(key), request)


@router.post(
    "/v1/authorizations/{flow_id}/selection",
    status_code=202,
    responses=errors(
        404,
        409,
        410,
        422,
        meanings={409: "the flow is not awaiting a selection", 422: "ids not offered to this flow"},
    ),
)
def submit_selection(
    flow_id: str, body: SelectionRequest, shim: ShimDeps, tenant: CallerTenant
) -> SelectionAccepted:
    selection = rules.submit_selection(shim.store, shim.enqueuer, shim.load_flow(flow_id, tenant), body.ids)
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
