"""The callers' webhook endpoints: register one (its secret shown once), list, change, rotate its secret,
enable it again, delete, see its deliveries a page at a time, replay the tenant's events since a moment.
Everything is scoped by the caller's tenant: an endpoint of another tenant is 404, like one that does not
exist."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool

from api_shim.deps import CallerTenant, Deps, ShimDeps
from api_shim.errors import ApiError
from api_shim.models import (
    DeliveryList,
    DeliveryStatus,
    EnableRequest,
    ReplayQueued,
    ReplayRequest,
    Webhook,
    WebhookChange,
    WebhookCreated,
    WebhookEnabled,
    WebhookList,
    WebhookRequest,
    WebhookSecret,
)
from api_shim.openapi import errors
from worker.events import utc_timestamp
from worker.webhooks.endpoints import Endpoint, EndpointChange, EndpointLimitReached, Replayed
from worker.webhooks.urls import RefusedUrl, checked_target

router = APIRouter()
# a replay reads what its tenant's event index holds since a moment (at most WEBHOOK_REPLAY_MAX_EVENTS
# events): each tenant gets a few a minute, enough to go on at once from a full window's next_since
REPLAY_EVERY_SECONDS = 60
REPLAYS_PER_WINDOW = 10


@router.post(
    "/v1/webhooks",
    status_code=201,
    responses=errors(
        422, meanings={422: "an invalid body, or a URL refused (its host must resolve to a public address)"}
    ),
)
async def create_webhook(body: WebhookRequest, shim: ShimDeps, tenant: CallerTenant) -> WebhookCreated:
    await _check_url(shim, body.url)
    events = list(dict.fromkeys(body.events or []))
    limit = shim.settings.webhook_max_endpoints
    try:
        endpoint = await run_in_threadpool(
            shim.webhooks.create_endpoint, tenant, body.url, events, limit, body.rate_limit or ""
        )
    except EndpointLimitReached as reached:
        raise ApiError(422, "webhook_limit", str(reached)) from None
    shown = _shown(endpoint)
    return WebhookCreated(
        id=shown.id, url=shown.url, events=shown.events, created_at=shown.created_at, secret=endpoint.secret
    )


@router.patch(
    "/v1/webhooks/{endpoint_id}",
    responses=errors(404, 422, meanings={422: "an invalid body, or a URL refused"}),
)
async def change_webhook(
    endpoint_id: str, body: WebhookChange, shim: ShimDeps, tenant: CallerTenant
) -> Webhook:
    endpoint = await _endpoint(shim, endpoint_id, tenant)
    given = body.model_fields_set
    if body.url is not None:
        await _check_url(shim, body.url)
    change = EndpointChange(
        url=body.url,
        events=tuple(dict.fromkeys(body.events)) if body.events is not None else None,
        rate_limit=(body.rate_limit or "") if "rate_limit" in given else None,
    )
    changed = await run_in_threadpool(shim.webhooks.update_endpoint, endpoint, change)
    if changed is None:
        raise ApiError(404, "webhook_not_found", "no such webhook")
    return _shown(changed)


@router.post("/v1/webhooks/{endpoint_id}/secret", responses=errors(404))
async def rotate_secret(endpoint_id: str, shim: ShimDeps, tenant: CallerTenant) -> WebhookSecret:
    endpoint = await _endpoint(shim, endpoint_id, tenant)
    overlap = shim.settings.webhook_secret_overlap_seconds
    secret = await run_in_threadpool(shim.webhooks.rotate_secret, endpoint, overlap)
    if secret is None:
        raise ApiError(404, "webhook_not_found", "no such webhook")
    return WebhookSecret(secret=secret)


@router.post(
    "/v1/webhooks/{endpoint_id}/enable",
    responses=errors(
        404, 422, 429, meanings={429: "with replay_since: ten replays per tenant a minute, as /replay"}
    ),
)
async def enable_webhook(
    endpoint_id: str, shim: ShimDeps, tenant: CallerTenant, body: EnableRequest | None = None
) -> WebhookEnabled:
    endpoint = await _endpoint(shim, endpoint_id, tenant)
    if body is not None and body.replay_since is not None:  # a replay as /replay makes: its turn first
        await _replay_turn(shim, tenant)
    if not await run_in_threadpool(shim.webhooks.enable, endpoint):
        raise ApiError(404, "webhook_not_found", "no such webhook")
    enabled = await _endpoint(shim, endpoint_id, tenant)
    replayed = Replayed(0)
    if body is not None and body.replay_since is not None:
        replayed = await run_in_threadpool(
            shim.webhooks.replay, enabled, body.replay_since.timestamp(), shim.enqueuer.enqueue_delivery
        )
    return WebhookEnabled(**_shown(enabled).model_dump(), **_replayed(replayed))


@router.get("/v1/webhooks")
async def list_webhooks(shim: ShimDeps, tenant: CallerTenant) -> WebhookList:
    endpoints = await run_in_threadpool(shim.webhooks.endpoints, tenant)
    return WebhookList(webhooks=[_shown(endpoint) for endpoint in endpoints])


@router.delete("/v1/webhooks/{endpoint_id}", status_code=204, responses=errors(404))
async def delete_webhook(endpoint_id: str, shim: ShimDeps, tenant: CallerTenant) -> Response:
    endpoint = await _endpoint(shim, endpoint_id, tenant)
    await run_in_threadpool(shim.webhooks.delete_endpoint, endpoint)
    return Response(status_code=204)


@router.get(
    "/v1/webhooks/{endpoint_id}/deliveries",
    responses=errors(404, 422, meanings={422: "a limit out of range, or a cursor this route did not give"}),
)
async def list_deliveries(
    endpoint_id: str,
    shim: ShimDeps,
    tenant: CallerTenant,
    limit: Annotated[int, Query(ge=1, le=100, description="deliveries per page")] = 50,
    cursor: Annotated[str | None, Query(max_length=256, description="next_cursor of the page before")] = None,
) -> DeliveryList:
    endpoint = await _endpoint(shim, endpoint_id, tenant)
    try:
        deliveries, next_cursor = await run_in_threadpool(
            shim.webhooks.deliveries_page, endpoint.id, limit, cursor
        )
    except ValueError:
        raise ApiError(422, "invalid_cursor", "cursor is not one this route gave") from None
    return DeliveryList(
        next_cursor=next_cursor,
        deliveries=[
            DeliveryStatus(
                event_id=delivery.event_id,
                type=delivery.type,
                flow_id=delivery.flow_id or None,
                status=delivery.status,  # type: ignore[arg-type]  # one of the three, by the Lua scripts
                attempts=delivery.attempts,
                last_status_code=delivery.last_status_code,
                next_attempt_at=None
                if delivery.next_attempt_at is None
                else utc_timestamp(delivery.next_attempt_at),
            )
            for delivery in deliveries
        ],
    )


@router.post(
    "/v1/webhooks/{endpoint_id}/replay",
    status_code=202,
    response_model_exclude_none=True,  # {"queued": n}, and next_since only when the replay stopped early
    responses=errors(404, 429, meanings={429: "ten replays per tenant a minute: Retry-After says when"}),
)
async def replay(endpoint_id: str, body: ReplayRequest, shim: ShimDeps, tenant: CallerTenant) -> ReplayQueued:
    endpoint = await _endpoint(shim, endpoint_id, tenant)
    await _replay_turn(shim, tenant)
    replayed = await run_in_threadpool(
        shim.webhooks.replay, endpoint, body.since.timestamp(), shim.enqueuer.enqueue_delivery
    )
    return ReplayQueued(**_replayed(replayed))


async def _replay_turn(shim: Deps, tenant: str) -> None:
    """A replay's turn among the tenant's (REPLAYS_PER_WINDOW a window): 429 when none is left."""
    turn = await run_in_threadpool(
        shim.webhooks.replay_turn, tenant, REPLAY_EVERY_SECONDS, REPLAYS_PER_WINDOW
    )
    if turn:
        message = f"{REPLAYS_PER_WINDOW} replays per tenant every {REPLAY_EVERY_SECONDS} seconds"
        raise ApiError(429, "replay_too_soon", message, {"Retry-After": str(math.ceil(turn))})


def _replayed(replayed: Replayed) -> dict[str, Any]:
    next_since = None if replayed.next_since is None else utc_timestamp(replayed.next_since)
    return {"queued": replayed.queued, "next_since": next_since}


async def _check_url(shim: Deps, url: str) -> None:
    try:  # resolving the host waits on DNS, bounded, in a pool of its own: no request thread waits for it
        await checked_target(url, shim.settings.webhook_allowed_hosts)
    except RefusedUrl as refused:
        raise ApiError(422, "webhook_url_refused", str(refused)) from None


async def _endpoint(shim: Deps, endpoint_id: str, tenant: str) -> Endpoint:
    endpoint = await run_in_threadpool(shim.webhooks.endpoint, endpoint_id, tenant)
    if endpoint is None:
        raise ApiError(404, "webhook_not_found", "no such webhook")
    return endpoint


def _shown(endpoint: Endpoint) -> Webhook:
    return Webhook(
        id=endpoint.id,
        url=endpoint.url,
        events=list(endpoint.events),
        created_at=utc_timestamp(endpoint.created_at),
        status="enabled" if endpoint.enabled else "disabled",
        disabled_at=None if endpoint.disabled_at is None else utc_timestamp(endpoint.disabled_at),
        rate_limit=endpoint.rate_limit or None,
    )
