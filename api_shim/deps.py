"""What the routes work with, handed to them by FastAPI: one `Deps` per app, built by `create_app`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from api_shim.errors import ApiError
from api_shim.openapi import BEARER
from api_shim.security import tenant_of_bearer
from api_shim.streams import EventStreams
from worker.config.settings import Settings
from worker.config.tenants import Tenant
from worker.connections.records import ConnectionStore
from worker.flows.enqueuer import Enqueuer
from worker.flows.flow import Flow, is_flow_id
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.observing import tracing
from worker.oktopost import AsyncOktopostClient
from worker.upstream.clients import Upstream, Upstreams
from worker.webhooks.endpoints import WebhookStore


@dataclass(frozen=True, slots=True)
class Deps:
    settings: Settings
    store: FlowStore
    # each Oktopost account's client and budget, for Step 1: the only upstream call the shim makes
    upstreams: Upstreams[AsyncOktopostClient]
    enqueuer: Enqueuer
    events_redis: redis.asyncio.Redis  # the event streams' reads: they wait on pub/sub, so asyncio
    webhooks: WebhookStore
    streams: EventStreams  # the event streams, under their caps
    # the tenants whose flows' callbacks need the start_url opened in the same browser (or a confirmation)
    tenants_requiring_start: tuple[str, ...] = ()

    @property
    def names(self) -> RedisNames:
        return self.store.names

    @property
    def connections(self) -> ConnectionStore:
        """The tenants' connections (made by flows' completions, in the flow store's Redis)."""
        return ConnectionStore(self.store.redis, self.names, self.settings.flow_retention_seconds)

    def load_flow(self, flow_id: str, tenant: str | None = None) -> Flow:
        """The flow, or a 404 that looks the same for a malformed id and an unknown one; with `tenant`,
        another tenant's flow is unknown too."""
        flow = self.find_flow(flow_id)
        if flow is None or (tenant is not None and flow.tenant != tenant):
            raise ApiError(404, "flow_not_found", "no such flow")
        return flow

    def tenant(self, name: str) -> Tenant:
        tenant = self.settings.tenants.get(name)
        assert tenant is not None, "a caller's tenant comes from the settings"
        return tenant

    def upstream(self, tenant: Tenant) -> Upstream[AsyncOktopostClient]:
        upstream = self.upstreams.get(tenant.oktopost.account_id)
        assert upstream is not None, "a tenant's account comes from the settings"
        return upstream

    def find_flow(self, flow_id: str) -> Flow | None:
        flow = self.store.get(flow_id) if is_flow_id(flow_id) else None
        if flow is not None:
            tracing.describe(flow)  # on the request's span, when traces are on
        return flow


async def app_deps(request: Request) -> Deps:
    # async, though it does not wait: FastAPI runs a plain `def` dependency in its thread pool, a thread
    # hop on every request for what is one attribute read
    deps: Deps = request.app.state.deps
    return deps


ShimDeps = Annotated[Deps, Depends(app_deps)]


async def caller(
    shim: ShimDeps, request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
) -> str:
    """Routes for callers (not browsers) take this: the name of the tenant whose Bearer key is presented;
    401 unless one is. (`BEARER` declares the scheme in /openapi.json; the header is read here whole.)"""
    return tenant_of_bearer(request.headers.get("authorization"), shim.settings.tenants)


CallerTenant = Annotated[str, Depends(caller)]
