"""What the routes work with, handed to them by FastAPI: one `Deps` per app, built by `create_app`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio
from fastapi import Depends, Header, Request

from api_shim.errors import ApiError
from api_shim.security import check_bearer
from worker.budget import UpstreamBudget
from worker.events import DEFAULT_TENANT
from worker.flow import Flow, is_flow_id
from worker.keys import RedisNames
from worker.oktopost import AsyncOktopostClient
from worker.queueing import Enqueuer
from worker.settings import Settings
from worker.store import FlowStore
from worker.webhooks.endpoints import WebhookStore


@dataclass(frozen=True, slots=True)
class Deps:
    settings: Settings
    store: FlowStore
    client: AsyncOktopostClient  # Oktopost, for Step 1: the only upstream call the shim makes
    budget: UpstreamBudget
    enqueuer: Enqueuer
    events_redis: redis.asyncio.Redis  # the event streams' reads: they wait on pub/sub, so asyncio
    webhooks: WebhookStore

    @property
    def names(self) -> RedisNames:
        return self.store.names

    def load_flow(self, flow_id: str) -> Flow:
        """The flow, or a 404 that looks the same for a malformed id and an unknown one."""
        flow = self.find_flow(flow_id)
        if flow is None:
            raise ApiError(404, "flow_not_found", "no such flow")
        return flow

    def find_flow(self, flow_id: str) -> Flow | None:
        return self.store.get(flow_id) if is_flow_id(flow_id) else None


async def app_deps(request: Request) -> Deps:
    # async, though it does not wait: FastAPI runs a plain `def` dependency in its thread pool, a thread
    # hop on every request for what is one attribute read
    deps: Deps = request.app.state.deps
    return deps


ShimDeps = Annotated[Deps, Depends(app_deps)]


async def caller(shim: ShimDeps, authorization: Annotated[str | None, Header()] = None) -> str:
    """Routes for callers (not browsers) take this: 401 unless a configured Bearer key is presented.
    Returns the caller's tenant: whatever the caller creates is that tenant's, and another tenant's is 404."""
    check_bearer(authorization, shim.settings.shim_api_keys)
    return DEFAULT_TENANT


Tenant = Annotated[str, Depends(caller)]
