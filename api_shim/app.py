"""The HTTP shim: callers start flows and submit selections, browsers come back with their okt token.

It validates, claims, enqueues and answers. The only upstream call made here is Step 1; verification
and completion run in the worker, which is told a flow id and nothing else.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from html import escape
from typing import Annotated
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api_shim import access, limits, metrics
from api_shim.errors import ApiError, install_error_handlers
from api_shim.models import (
    AuthorizationCreated,
    AuthorizationRequest,
    FlowStatus,
    SelectionAccepted,
    SelectionRequest,
)
from api_shim.security import check_bearer, check_return_url
from worker import runtime
from worker.budget import STEP1_PRIORITY, NoBudgetInTime
from worker.errors import RefusedError, RejectedError
from worker.events import utc_timestamp
from worker.flow import Flow, FlowState, token_fingerprint
from worker.keys import RedisNames
from worker.oktopost import AsyncOktopostClient, canonical_entity_type, canonical_network
from worker.retry import DeadlineReached, RetryPolicy, acall_until_deadline
from worker.settings import Settings, get_settings
from worker.store import FlowStore, QueuedTask, Transition, TransitionOutcome

log = logging.getLogger(__name__)

FLOW_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
# okt tokens look like 591c6053d81978.11578446867279657339b29ad2799b11ca4ff883; accept a little more
OKT_TOKEN = re.compile(r"^[A-Za-z0-9._~-]{8,256}$")
STEP1_SECONDS = 8.0  # the whole of Step 1's bounded retry: a caller is waiting on this request
STEP1_POLICY = RetryPolicy(max_attempt_seconds=4.0, backoff_max=1.0)
REDIS_ANSWER_SECONDS = 1.0  # a stopped or unreachable Redis: 503 within about a second, never a hang


def enqueue(flow_id: str, state: FlowState) -> None:
    from worker.tasks import enqueue as enqueue_task

    enqueue_task(flow_id, state)


def queued_task(flow_id: str, state: FlowState, redis_url: str) -> QueuedTask | None:
    """The task message that the flow's step pushes itself (one atomic trip to Redis: no claimed flow
    without its task); None when the broker is another Redis, and then the step is followed by enqueue."""
    from worker.tasks import queued_with_step

    return queued_with_step(flow_id, state, redis_url)


def _queue_after(step: Transition, flow_id: str, state: FlowState, queued: QueuedTask | None) -> None:
    if step.done and queued is None:
        enqueue(flow_id, state)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    names = RedisNames(settings.channel_prefix)
    store = FlowStore(
        runtime.redis_client(settings, answer_within=REDIS_ANSWER_SECONDS), names, runtime.lifetimes(settings)
    )
    upstream = AsyncOktopostClient.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await upstream.aclose()

    app = FastAPI(
        title="oktopost-connect shim",
        version="1",
        description="Starts Oktopost social authorization flows and receives their callbacks.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    limits.install(app)  # innermost: metrics and the access log count what it refuses
    metrics.install(app, store.redis, names.worker_metrics)
    access.install(app)
    app.state.store = store
    app.state.settings = settings

    budget = runtime.budget(settings, store.redis)
    # a new flow waits this long at most for a Step 1 slot; verifications and completions go first
    admission_wait = max(1.0, min(STEP1_SECONDS / 2, settings.token_ttl_seconds / 4))

    async def admit_step1() -> Callable[[], None]:
        grant = await run_in_threadpool(
            budget.acquire, STEP1_PRIORITY, time.time() + admission_wait, STEP1_POLICY.max_attempt_seconds + 1
        )
        return lambda: budget.finished(grant)

    def caller(authorization: Annotated[str | None, Header()] = None) -> None:
        check_bearer(authorization, settings.shim_api_keys)

    def load(flow_id: str) -> Flow:
        if not FLOW_ID.match(flow_id):
            raise ApiError(404, "flow_not_found", "no such flow")
        flow = store.get(flow_id)
        if flow is None:
            raise ApiError(404, "flow_not_found", "no such flow")
        return flow

    @app.post("/v1/authorizations", status_code=201, dependencies=[Depends(caller)])
    async def start_authorization(body: AuthorizationRequest) -> AuthorizationCreated:
        try:
            network = canonical_network(body.network)
            entity_type = canonical_entity_type(body.type)
        except ValueError as error:
            raise ApiError(422, "invalid_request", str(error)) from None
        return_url = (
            check_return_url(body.return_url, settings.allowed_return_urls) if body.return_url else None
        )
        flow_id = secrets.token_hex(20)  # 160 random bits; hex never starts with "-" on a command line
        callback_url = f"{settings.public_base_url}/v1/callback/{flow_id}"
        try:
            redirect_url, _ = await acall_until_deadline(
                lambda timeout: upstream.start_authorization(
                    network, callback_url, entity_type, timeout=timeout
                ),
                time.time() + STEP1_SECONDS,
                policy=STEP1_POLICY,
                admit=admit_step1,
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
            store.create, flow_id, network, entity_type, body.reference, return_url
        )
        metrics.FLOWS_STARTED.labels(network=network, entity_type=entity_type).inc()
        return AuthorizationCreated(
            flow_id=flow_id,
            redirect_url=redirect_url,
            channel=names.flow_channel(flow_id),
            status_url=f"{settings.public_base_url}/v1/authorizations/{flow_id}",
            expires_at=utc_timestamp(flow.deadline),
        )

    @app.get("/v1/callback/{flow_id}", response_model=None, responses={303: {"description": "to return_url"}})
    def callback(flow_id: str, request: Request) -> Response:
        started = time.perf_counter()
        params = request.query_params.getlist("okt")
        if len(params) > 1:
            raise ApiError(400, "invalid_callback", "more than one okt parameter")
        flow = load(flow_id)
        if not params:
            response = _denied(store, flow, request.query_params.get("error"))
        else:
            response = _claim(store, flow, params[0], settings.redis_url)
        metrics.CALLBACK_SECONDS.observe(time.perf_counter() - started)
        return response

    @app.get("/v1/authorizations/{flow_id}", dependencies=[Depends(caller)])
    def flow_status(flow_id: str) -> FlowStatus:
        flow = load(flow_id)
        return FlowStatus(
            flow_id=flow.flow_id,
            status=flow.state.value,
            network=flow.network,
            type=flow.entity_type,
            reference=flow.reference,
            events=store.events(flow_id),
        )

    @app.post("/v1/authorizations/{flow_id}/selection", status_code=202, dependencies=[Depends(caller)])
    def submit_selection(flow_id: str, body: SelectionRequest) -> SelectionAccepted:
        flow = load(flow_id)
        _refuse_unless(flow, FlowState.AWAITING_SELECTION)
        if flow.seconds_left() <= 0 or store.token(flow_id) is None:
            raise ApiError(410, "token_expired", "the authorization token has expired")
        offered = set(flow.offered_ids())
        unknown = [entity_id for entity_id in body.ids if entity_id not in offered]
        if unknown:
            raise ApiError(422, "invalid_selection", f"not offered to this flow: {', '.join(unknown[:5])}")
        ids = list(dict.fromkeys(body.ids))
        queued = queued_task(flow_id, FlowState.COMPLETING, settings.redis_url)
        step = store.submit_selection(flow, ids, queue=queued)
        if not step.done:
            _refuse_unless(store.get(flow_id) or flow, FlowState.AWAITING_SELECTION)
        _queue_after(step, flow_id, FlowState.COMPLETING, queued)
        return SelectionAccepted(flow_id=flow_id, status=FlowState.COMPLETING.value, ids=ids)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False, response_model=None)
    def readyz() -> Response:
        try:
            store.redis.ping()
        except Exception as error:
            return JSONResponse(
                {
                    "error": {
                        "code": "unavailable",
                        "message": f"Redis does not answer ({type(error).__name__})",
                    }
                },
                status_code=503,
            )
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _refuse_unless(flow: Flow, state: FlowState) -> None:
    if flow.state is FlowState.EXPIRED:
        raise ApiError(410, "flow_expired", "the flow has expired")
    if flow.state is not state:
        raise ApiError(409, "wrong_state", f"the flow is {flow.state.value}, not {state.value}")


def _claim(store: FlowStore, flow: Flow, token: str, redis_url: str) -> Response:
    if not OKT_TOKEN.match(token):
        raise ApiError(400, "invalid_callback", "okt is not a well-formed token")
    if flow.state is FlowState.AWAITING_CALLBACK and flow.seconds_left() <= 0:
        store.expire(flow)
        raise ApiError(410, "flow_expired", "the flow has expired")
    step: Transition | None = None
    if flow.state is FlowState.AWAITING_CALLBACK:
        queued = queued_task(flow.flow_id, FlowState.VERIFYING, redis_url)
        step = store.claim_callback(flow, token, queue=queued)
        _queue_after(step, flow.flow_id, FlowState.VERIFYING, queued)
    if step is not None and step.done:
        metrics.CALLBACKS.labels(outcome="claimed").inc()
        return _back_to_caller(flow, "processing")
    if step is not None and step.outcome is TransitionOutcome.TOKEN_IN_USE:
        metrics.CALLBACKS.labels(outcome="conflict").inc()
        raise ApiError(409, "token_already_used", "this token was already used by another flow")
    fingerprint = step.token_fp if step is not None else flow.token_fp
    state = (step.state if step is not None else None) or flow.state
    if fingerprint and fingerprint == token_fingerprint(token):
        metrics.CALLBACKS.labels(outcome="repeated").inc()
        return _back_to_caller(flow, "processing")
    if state is FlowState.EXPIRED:
        raise ApiError(410, "flow_expired", "the flow has expired")
    metrics.CALLBACKS.labels(outcome="conflict").inc()
    raise ApiError(409, "flow_already_claimed", "this flow already received another token")


def _denied(store: FlowStore, flow: Flow, error: str | None) -> Response:
    if flow.state is FlowState.AWAITING_CALLBACK:
        if flow.seconds_left() <= 0:
            store.expire(flow)
            raise ApiError(410, "flow_expired", "the flow has expired")
        reason = (error or "no token").strip()[:64]
        reason = re.sub(r"[^A-Za-z0-9_. -]", "", reason) or "no token"
        store.fail(flow, "authorization_denied", f"the user did not authorize ({reason})", False, 0)
        metrics.CALLBACKS.labels(outcome="denied").inc()
        return _back_to_caller(flow, "denied")
    current = store.get(flow.flow_id) or flow
    if current.state is FlowState.EXPIRED:
        raise ApiError(410, "flow_expired", "the flow has expired")
    if current.state is FlowState.FAILED:
        return _back_to_caller(flow, "denied")
    raise ApiError(409, "flow_already_claimed", "this flow already received a token")


def _back_to_caller(flow: Flow, status: str) -> Response:
    if flow.return_url:
        parts = urlsplit(flow.return_url)
        query = [
            *parse_qsl(parts.query, keep_blank_values=True),
            ("flow_id", flow.flow_id),
            ("status", status),
        ]
        return RedirectResponse(urlunsplit(parts._replace(query=urlencode(query))), status_code=303)
    message = {
        "processing": "Thanks! Your account is being connected. You can close this window.",
        "denied": "The authorization was not granted. You can close this window.",
    }[status]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>oktopost-connect</title></head>"
        f"<body><p>{escape(message)}</p><p>Reference: <code>{escape(flow.flow_id)}</code></p></body></html>"
    )
    return HTMLResponse(page, status_code=200)
