"""The shim app in this process on fakeredis, with Oktopost's Step 1 on httpx's MockTransport and a
recording Enqueuer: every route answers in milliseconds, with nothing else running."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import fakeredis
import httpx
from celery import Celery
from fastapi import FastAPI

from api_shim.app import create_app
from tests.support.clocks import seen_from
from tests.support.stack import API_KEY
from worker.config.settings import Settings, load_settings
from worker.events import ConnectedCredential, EntityOffer
from worker.flows.enqueuer import Enqueuer
from worker.flows.flow import BrowserUI, Flow, FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.oktopost import AsyncOktopostClient
from worker.queueing.versions import LibraryVersions
from worker.tasks import runtime
from worker.upstream.budget import UpstreamBudget
from worker.upstream.clients import Upstream

PREFIX = "shimtest"
SHIM_URL = "https://shim.example"
RETURN_URL = "https://app.example/done?tab=social"
REDIRECT_URL = "https://app.oktopost.example/authorize?session=abc"
TOKEN = "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"
OTHER_TOKEN = "6a2d7164e92a89.22689557978380768440c3be3800c22db5a00994"
CALLER = {"Authorization": f"Bearer {API_KEY}"}
OFFERS = [EntityOffer(id=f"1079542{i}", name=f"Page {i}", network="Facebook") for i in range(3)]
TESTED_VERSIONS = LibraryVersions(celery="5.7.0", kombu="5.7.0")


class RecordingEnqueuer(Enqueuer):
    """The real Enqueuer's rules, with the broker set apart from the flows' Redis, so that every task is
    sent after its step; sending records the task instead."""

    def __init__(self) -> None:
        app = Celery("shim-tests", broker="memory://", set_as_current=False)
        super().__init__(app, "redis://flows.invalid:6379/0", versions=TESTED_VERSIONS)
        self.enqueued: list[tuple[str, FlowState]] = []
        self.deliveries: list[str] = []
        self.deletions: list[tuple[str, str]] = []

    def enqueue(self, flow_id: str, state: FlowState) -> None:
        self.enqueued.append((flow_id, state))

    def enqueue_connection_deletion(self, tenant: str, connection_id: str) -> None:
        self.deletions.append((tenant, connection_id))

    def enqueue_delivery(self, delivery_id: str) -> None:
        self.deliveries.append(delivery_id)


@dataclass
class FakeOktopost:
    """Answers Step 1 with REDIRECT_URL, or with `refusal` when one is set; keeps every request."""

    refusal: httpx.Response | None = None
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.refusal is not None:
            return self.refusal
        return httpx.Response(200, json={"Result": True, "RedirectUrl": REDIRECT_URL})

    def form(self, index: int = -1) -> dict[str, str]:
        """The form-encoded fields of a request Oktopost received."""
        return {name: values[0] for name, values in parse_qs(self.requests[index].content.decode()).items()}


@dataclass
class Shim:
    """The app and what it works with, for a test to set up flows and look at the outcome."""

    http: httpx.AsyncClient
    store: FlowStore
    budget: UpstreamBudget
    enqueuer: RecordingEnqueuer
    oktopost: FakeOktopost
    redis_server: fakeredis.FakeServer
    app: FastAPI

    def another_browser(self) -> httpx.AsyncClient:
        """A client of the same app with a cookie jar of its own (empty): another browser."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=self.http.base_url)

    def new_flow(
        self, return_url: str | None = RETURN_URL, *, age: float = 0.0, ui: BrowserUI = BrowserUI.HOSTED
    ) -> Flow:
        """A flow awaiting its callback, started `age` seconds ago."""
        # created by a process whose idea of the time lies `age` seconds back
        store = seen_from(self.store, -age)
        return store.create(new_flow_id(), "Facebook", "page", "crm-42", return_url, ui)

    def flow_awaiting_selection(self, ui: BrowserUI = BrowserUI.HOSTED) -> Flow:
        flow = self.new_flow(ui=ui)
        assert self.store.claim_callback(flow, new_token()).done
        return self.offer(flow, OFFERS)

    def offer(self, flow: Flow, offers: list[EntityOffer]) -> Flow:
        """The worker's part of a flow in verifying: Oktopost offered these entities."""
        owner = "verifying-task"
        self.store.take_work(flow.flow_id, owner, FlowState.VERIFYING)
        assert self.store.offer_selection(self.flow(flow.flow_id), offers, owner).done
        return self.flow(flow.flow_id)

    def complete(self, flow: Flow, names: list[str]) -> Flow:
        """The worker's part of a flow in completing: Oktopost connected these accounts."""
        owner = "completing-task"
        self.store.take_work(flow.flow_id, owner, FlowState.COMPLETING)
        credentials = [
            ConnectedCredential(id=f"cred-{index}", name=name, status="valid", network=flow.network)
            for index, name in enumerate(names)
        ]
        assert self.store.complete(self.flow(flow.flow_id), credentials, owner).done
        return self.flow(flow.flow_id)

    def flow(self, flow_id: str) -> Flow:
        flow = self.store.get(flow_id)
        assert flow is not None
        return flow

    def event_types(self, flow_id: str) -> list[str]:
        return [event["type"] for event in self.store.events(flow_id)]


_serial = iter(range(1, 10**9))


def new_flow_id() -> str:
    return f"{next(_serial):040x}"


def new_token() -> str:
    return f"7b3e8275fa3b9a.{next(_serial):040d}"


def shim_settings(**overrides: object) -> Settings:
    return load_settings(
        **{
            "redis_url": "redis://flows.invalid:6379/0",
            "shim_api_keys": API_KEY,
            "allowed_return_urls": "https://app.example",
            "public_base_url": SHIM_URL,
            "oktopost_base_url": "https://api.oktopost.example",
            "channel_prefix": PREFIX,
            **overrides,
        }
    )


@asynccontextmanager
async def open_shim(
    rate: tuple[int, float] = (1000, 1.0), daily_limit: int | None = None, **settings_overrides: object
) -> AsyncIterator[Shim]:
    """A new app on a Redis of its own; `rate`: Oktopost calls allowed per that many seconds;
    `daily_limit`: the account's calls a day; `settings_overrides`: settings other than the tests' own."""
    settings = shim_settings(**settings_overrides)
    redis_server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=redis_server)
    names = RedisNames(PREFIX)
    store = FlowStore(redis, names, Lifetimes())
    account = names.account(settings.oktopost_account_id)  # the default tenant's
    budget = UpstreamBudget(redis, account, limit=rate[0], period=rate[1], daily_limit=daily_limit)
    oktopost = FakeOktopost()
    client = AsyncOktopostClient(
        settings.oktopost_base_url, "account", "api-key", transport=httpx.MockTransport(oktopost)
    )
    enqueuer = RecordingEnqueuer()
    events_redis = fakeredis.FakeAsyncRedis(server=redis_server)
    # the default tenant's account called through the recording Oktopost; any other tenant's built as usual
    upstreams = runtime.shim_upstreams(settings, redis, [Upstream(account.account_id, client, budget)])
    app = create_app(settings, store=store, upstreams=upstreams, enqueuer=enqueuer, events_redis=events_redis)
    base_url = settings.public_base_url
    async with (
        client,
        events_redis,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as http,
    ):
        yield Shim(http, store, budget, enqueuer, oktopost, redis_server, app)
