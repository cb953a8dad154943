"""The HTTP shim: callers start flows and submit selections, browsers come back with their okt token.

It validates, claims, enqueues and answers. The only upstream call made here is Step 1; verification
and completion run in the worker, which is told a flow id and nothing else. `create_app` takes what the
routes work with (the flow store, the Oktopost accounts' clients and budgets, the Enqueuer) and builds
from the settings whatever it is not given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio
import redis.asyncio.sentinel
from fastapi import FastAPI

from api_shim import access, bodies, browser, limits, metrics, pages
from api_shim.deps import Deps
from api_shim.errors import install_error_handlers
from api_shim.openapi import describe
from api_shim.routes import authorizations, callbacks, connect, connections, probes, start, webhooks
from api_shim.streams import POOL_CONNECTIONS, EventStreams
from worker.config.settings import Settings, get_settings
from worker.flows.enqueuer import Enqueuer
from worker.flows.store import FlowStore
from worker.observing import tracing
from worker.oktopost import AsyncOktopostClient
from worker.tasks import runtime
from worker.upstream.clients import Upstreams
from worker.webhooks.endpoints import WebhookStore

REDIS_ANSWER_SECONDS = 1.0  # a stopped or unreachable Redis: 503 within about a second, never a hang


def create_app(
    settings: Settings | None = None,
    *,
    store: FlowStore | None = None,
    enqueuer: Enqueuer | None = None,
    events_redis: redis.asyncio.Redis | None = None,
    upstreams: Upstreams[AsyncOktopostClient] | None = None,
) -> FastAPI:
    """The shim's ASGI app. `upstreams`: each Oktopost account's client and budget, built from the
    settings (on first use) when not given. A client passed in stays its caller's to close; one built
    here is closed when the app shuts down. `events_redis` (asyncio) reads the event streams; built from
    the settings when not given."""
    settings = settings or get_settings()
    if store is None:
        redis_client = runtime.redis_client(settings, answer_within=REDIS_ANSWER_SECONDS)
        store = runtime.flow_store(settings, redis_client, refuse_unconfirmed=True)
    if upstreams is None:
        upstreams = runtime.shim_upstreams(settings, store.redis)
    own_events_redis = events_redis is None
    events_redis = events_redis or _events_redis(settings)
    deps = Deps(
        settings=settings,
        store=store,
        upstreams=upstreams,
        enqueuer=enqueuer or _enqueuer(settings),
        events_redis=events_redis,
        webhooks=webhook_store(settings, store),
        streams=EventStreams(
            events_redis,
            store.names,
            settings.sse_max_per_flow,
            settings.sse_max_per_key,
            settings.sse_max_seconds,
        ),
        tenants_requiring_start=tuple(tenant.name for tenant in settings.tenants if tenant.require_start),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        for built in deps.upstreams.built_clients():
            await built.aclose()
        await deps.streams.subscriptions.close()
        if own_events_redis:
            await deps.events_redis.aclose()

    app = FastAPI(
        title="oktopost-connect shim",
        version="1",
        description="Starts Oktopost social authorization flows and receives their callbacks.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their code from a CDN, which the pages' content policy forbids
        docs_url=None,
        redoc_url=None,
        # a path that names no route is 404, never a 307 to a guess without its trailing slash (which made
        # /v1/authorizations/..%2f a redirect to a flow named "..")
        redirect_slashes=False,
    )
    app.state.deps = deps
    install_error_handlers(app)
    limits.install(app)  # innermost: metrics and the access log count what it refuses
    bodies.install(app, settings.tenants, settings.shim_body_timeout_seconds)  # keys before bodies
    accounts = [account_budget.account for account_budget in deps.upstreams.budgets()]
    metrics.install(store.redis, store.names, accounts, deps.webhooks)
    access.install(app)
    app.add_middleware(browser.BrowserHeaders)  # outermost: every browser answer, refusals included
    app.mount(pages.STATIC_PATH, pages.static_files(), name="connect-static")
    app.include_router(authorizations.router)
    app.include_router(connections.router)
    app.include_router(callbacks.router)
    app.include_router(connect.router)
    app.include_router(probes.router)
    app.include_router(start.router)
    app.include_router(webhooks.router)
    describe(app)
    if tracing.start("oktopost-connect-shim"):  # OTEL_EXPORTER_OTLP_ENDPOINT: api_shim/traces.py
        from api_shim import traces

        traces.install(app, events_redis, store.names)
        tracing.instrument_celery()  # the tasks it sends with apply_async (a broker apart from the flows)
    return app


def webhook_store(settings: Settings, store: FlowStore) -> WebhookStore:
    return WebhookStore.configured(store.redis, store.names, settings)


def _events_redis(settings: Settings) -> redis.asyncio.Redis:
    # a stream waits on pub/sub a second at a time (worker.follow.subscribe): only the commands have a
    # timeout. The pool is bounded (api_shim/streams.py caps the streams of a process below it), and a
    # command waits a little for a connection rather than open one more
    if settings.redis_sentinels:
        options: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": REDIS_ANSWER_SECONDS}
        sentinel, client = redis.asyncio.sentinel.Sentinel, redis.asyncio.Redis
        primary: redis.asyncio.Redis = runtime.sentinel_primary(settings, sentinel, client, options)
        return primary
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=POOL_CONNECTIONS,
        timeout=REDIS_ANSWER_SECONDS,
        socket_timeout=5,
        socket_connect_timeout=REDIS_ANSWER_SECONDS,
    )
    return redis.asyncio.Redis(connection_pool=pool)


def _enqueuer(settings: Settings) -> Enqueuer:
    from worker.tasks.celery_tasks import (
        enqueuer,  # the Celery app and its tasks: loaded only when none is given
    )

    return enqueuer(settings.store_as_broker_url)
