"""The callers' webhook endpoints: register one (its secret shown once), list, delete, see its
deliveries, replay the tenant's events since a moment. Everything is scoped by the caller's tenant: an
endpoint of another tenant is 404, like one that does not exist."""

from __future__ import annotations

import math

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from api_shim.deps import CallerTenant, Deps, ShimDeps
from api_shim.errors import ApiError
from api_shim.models import (
    DeliveryList,
    DeliveryStatus,
    ReplayQueued,
    ReplayRequest,
    Webhook,
    WebhookCreated,
    WebhookList,
    WebhookRequest,
)
from worker.events import utc_timestamp
from worker.webhooks.endpoints import Endpoint, EndpointLimitReached
from worker.webhooks.urls import RefusedUrl, target_of

router = APIRouter()
# a replay reads what the all-flows stream holds since a moment: each tenant gets one in a while
REPLAY_EVERY_SECONDS = 60


@router.post("/v1/webhooks", status_code=201)
async def create_webhook(body: WebhookRequest, shim: ShimDeps, tenant: CallerTenant) -> WebhookCreated:
    try:  # resolving the host waits on DNS: off the event loop
        await run_in_threadpool(target_of, body.url, shim.settings.webhook_allowed_hosts)
    except RefusedUrl as refused:
        raise ApiError(422, "webhook_url_refused", str(refused)) from None
    events = list(dict.fromkeys(body.events or []))
    limit = shim.settings.webhook_max_endpoints
    try:
        endpoint = await run_in_threadpool(shim.webhooks.create_endpoint, tenant, body.url, events, limit)
    except EndpointLimitReached as reached:
        raise ApiError(422, "webhook_limit", str(reached)) from None
    return WebhookCreated(**_shown(endpoint).model_dump(), secret=endpoint.secret)


@router.get("/v1/webhooks")
async def list_webhooks(shim: ShimDeps, tenant: CallerTenant) -> WebhookList:
    endpoints = await run_in_threadpool(shim.webhooks.endpoints, tenant)
    return WebhookList(webhooks=[_shown(endpoint) for endpoint in endpoints])


@router.delete("/v1/webhooks/{endpoint_id}", status_code=204)
async def delete_webhook(endpoint_id: str, shim: ShimDeps, tenant: CallerTenant) -> Response:
    endpoint = await _endpoint(shim, endpoint_id, tenant)
    await run_in_threadpool(shim.webhooks.delete_endpoint, endpoint)
    return Response(status_code=204)


@router.get("/v1/webhooks/{endpoint_id}/deliveries")
async def list_deliveries(endpoint_id: str, shim: ShimDeps, tenant: CallerTenant) -> DeliveryList:
    endpoint = await _endpoint(shim, endpoint_id, tenant)
    deliveries = await run_in_threadpool(shim.webhooks.deliveries, endpoint.id)
    return DeliveryList(
        deliveries=[
            DeliveryStatus(
                event_id=delivery.event_id,
                type=delivery.type,
                flow_id=delivery.flow_id,
                status=delivery.status,  # type: ignore[arg-type]  # one of the three, by the Lua scripts
                attempts=delivery.attempts,
                last_status_code=delivery.last_status_code,
                next_attempt_at=None
                if delivery.next_attempt_at is None
                else utc_timestamp(delivery.next_attempt_at),
            )
            for delivery in deliveries
        ]
    )


@router.post("/v1/webhooks/{endpoint_id}/replay", status_code=202)
async def replay(endpoint_id: str, body: ReplayRequest, shim: ShimDeps, tenant: CallerTenant) -> ReplayQueued:
    endpoint = await _endpoint(shim, endpoint_id, tenant)
    wait = await run_in_threadpool(shim.webhooks.replay_turn, tenant, REPLAY_EVERY_SECONDS)
    if wait:
        message = f"one replay per tenant every {REPLAY_EVERY_SECONDS} seconds"
        raise ApiError(429, "replay_too_soon", message, {"Retry-After": str(math.ceil(wait))})
    queued = await run_in_threadpool(
        shim.webhooks.replay, endpoint, body.since.timestamp(), shim.enqueuer.enqueue_delivery
    )
    return ReplayQueued(queued=queued)


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
    )
