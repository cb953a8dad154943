"""Two tenants in one shim, each with its caller key, return URLs and Oktopost account: a flow is its
tenant's alone (another tenant's key gets 404 on every flow route), Step 1 goes to the tenant's account
with its credentials and under its budget, and the flow and its events carry the tenant."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import fakeredis
import httpx
import pytest

from api_shim.app import create_app
from tests.support.shim import PREFIX, REDIRECT_URL, RecordingEnqueuer, shim_settings
from worker.events import ConnectedCredential
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.oktopost import AsyncOktopostClient
from worker.tasks import runtime
from worker.upstream.clients import Upstreams

pytestmark = pytest.mark.anyio

ACME_KEY = "acme-caller-key-0123456789abcdef"
GLOBEX_KEY = "globex-caller-key-0123456789abcd"
ACME = {"Authorization": f"Bearer {ACME_KEY}"}
GLOBEX = {"Authorization": f"Bearer {GLOBEX_KEY}"}
TENANTS = f"""
[tenants.acme]
api_keys = ["{ACME_KEY}"]
allowed_return_urls = ["https://app.acme.example"]
oktopost.account_id = "acme-account"
oktopost.api_key = "acme-oktopost-key"
oktopost.base_url = "https://eu.oktopost.example"

[tenants.globex]
api_keys = ["{GLOBEX_KEY}"]
allowed_return_urls = ["https://globex.example"]
oktopost.account_id = "globex-account"
oktopost.api_key = "globex-oktopost-key"
oktopost.base_url = "https://us.oktopost.example"
"""
START = {"network": "LinkedIn", "type": "page"}


@dataclass
class TwoTenants:
    http: httpx.AsyncClient
    store: FlowStore
    upstreams: Upstreams[AsyncOktopostClient]
    requests: list[httpx.Request]
    app_enqueuer: RecordingEnqueuer

    async def start(self, caller: dict[str, str], **body: str) -> httpx.Response:
        return await self.http.post("/v1/authorizations", json=START | body, headers=caller)

    def connect(self, flow_id: str, credential_id: str) -> None:
        """The flow's worker steps, straight on the store: its callback, its work, its completion."""
        flow = self.store.get(flow_id)
        assert flow is not None
        assert self.store.claim_callback(flow, "okt-token-0123456789").done
        self.store.take_work(flow_id, "task-1", FlowState.VERIFYING)
        taken = self.store.get(flow_id)
        assert taken is not None
        credential = ConnectedCredential(id=credential_id, name="Acme", status="valid", network="LinkedIn")
        assert self.store.complete(taken, [credential], "task-1").done


@pytest.fixture
async def shim(tmp_path: Path) -> AsyncIterator[TwoTenants]:
    path = tmp_path / "tenants.toml"
    path.write_text(TENANTS)
    settings = shim_settings(tenants_file=str(path))
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    store = FlowStore(redis, RedisNames(PREFIX), Lifetimes())
    requests: list[httpx.Request] = []
    enqueuer = RecordingEnqueuer()

    def oktopost(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"Result": True, "RedirectUrl": REDIRECT_URL})

    upstreams = Upstreams(
        settings.tenants.accounts,
        lambda account: AsyncOktopostClient(
            account.base_url, account.account_id, account.api_key, transport=httpx.MockTransport(oktopost)
        ),
        lambda account: runtime.budget(settings, redis, account),
    )
    app = create_app(
        settings,
        store=store,
        upstreams=upstreams,
        enqueuer=enqueuer,
        events_redis=fakeredis.FakeAsyncRedis(server=server),
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=settings.public_base_url) as http,
    ):
        yield TwoTenants(http, store, upstreams, requests, enqueuer)


def _basic_user(request: httpx.Request) -> str:
    scheme, _, credentials = request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    return base64.b64decode(credentials).decode().partition(":")[0]


async def test_each_tenants_flow_uses_its_own_oktopost_account(shim: TwoTenants) -> None:
    acme = await shim.start(ACME)
    globex = await shim.start(GLOBEX)
    assert (acme.status_code, globex.status_code) == (201, 201)
    assert [(request.url.host, _basic_user(request)) for request in shim.requests] == [
        ("eu.oktopost.example", "acme-account"),
        ("us.oktopost.example", "globex-account"),
    ]
    acme_flow = shim.store.get(acme.json()["flow_id"])
    assert acme_flow is not None
    assert (acme_flow.tenant, acme_flow.account) == ("acme", "acme-account")
    assert [event["tenant"] for event in shim.store.events(acme_flow.flow_id)] == ["acme"]
    # each account reserves its own flows' later calls (a page flow: verify and the PUT)
    budgets = {budget.names.account_id: budget for budget in shim.upstreams.budgets()}
    assert budgets["acme-account"].account.standing().reserved == 2
    assert budgets["globex-account"].account.standing().reserved == 2
    assert budgets["acme-account"].account.standing().used_today == 1


async def test_another_tenants_key_gets_404_on_every_flow_route(shim: TwoTenants) -> None:
    flow_id = (await shim.start(ACME)).json()["flow_id"]
    routes = [
        ("GET", f"/v1/authorizations/{flow_id}", None),
        ("GET", f"/v1/authorizations/{flow_id}/events", None),
        ("POST", f"/v1/authorizations/{flow_id}/selection", {"ids": ["1"]}),
    ]
    for method, path, body in routes:
        answer = await shim.http.request(method, path, json=body, headers=GLOBEX)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["code"] == "flow_not_found"
    assert (await shim.http.get(f"/v1/authorizations/{flow_id}", headers=ACME)).status_code == 200
    # the owner reaches the selection route (it is not awaiting a selection yet: 409, not 404)
    selection = await shim.http.post(
        f"/v1/authorizations/{flow_id}/selection", json={"ids": ["1"]}, headers=ACME
    )
    assert selection.status_code == 409
    assert shim.store.get(flow_id).state is FlowState.AWAITING_CALLBACK  # type: ignore[union-attr]


async def test_another_tenants_key_gets_404_on_every_connection_route(shim: TwoTenants) -> None:
    flow_id = (await shim.start(ACME, reference="user-7")).json()["flow_id"]
    shim.connect(flow_id, "003-001000000000000-10795421000000000")
    connection_id = "003-001000000000000-10795421000000000"
    routes = [
        ("GET", f"/v1/connections/{connection_id}"),
        ("DELETE", f"/v1/connections/{connection_id}"),
        ("POST", f"/v1/connections/{connection_id}/reconnect"),
    ]
    for method, path in routes:
        answer = await shim.http.request(method, path, headers=GLOBEX)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["code"] == "connection_not_found"
    assert (await shim.http.get("/v1/connections", headers=GLOBEX)).json()["connections"] == []
    listed = (await shim.http.get("/v1/connections", headers=ACME)).json()
    assert [(c["id"], c["references"], c["flow_id"]) for c in listed["connections"]] == [
        (connection_id, ["user-7"], flow_id)
    ]
    assert listed["next_cursor"] is None
    deleting = await shim.http.delete(f"/v1/connections/{connection_id}", headers=ACME)
    assert (deleting.status_code, deleting.json()) == (202, {"id": connection_id, "status": "deleting"})
    again = await shim.http.delete(f"/v1/connections/{connection_id}", headers=ACME)
    assert again.status_code == 202
    assert shim.app_enqueuer.deletions == [("acme", connection_id)]


async def test_return_url_is_checked_against_the_callers_tenant(shim: TwoTenants) -> None:
    assert (await shim.start(ACME, return_url="https://app.acme.example/done")).status_code == 201
    refused = await shim.start(GLOBEX, return_url="https://app.acme.example/done")
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "return_url_not_allowed"
    assert (await shim.start(GLOBEX, return_url="https://globex.example/back")).status_code == 201


async def test_one_accounts_pause_refuses_only_its_tenants_new_flows(shim: TwoTenants) -> None:
    budgets = {budget.names.account_id: budget for budget in shim.upstreams.budgets()}
    budgets["acme-account"].account.pause(retry_after=120)
    refused = await shim.start(ACME)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "upstream_blocked"
    assert (await shim.start(GLOBEX)).status_code == 201
    metrics = (await shim.http.get("/metrics")).text
    assert 'okc_account_paused{account="acme-account"} 1.0' in metrics
    assert 'okc_account_paused{account="globex-account"} 0.0' in metrics


async def test_a_key_of_no_tenant_is_refused(shim: TwoTenants) -> None:
    answer = await shim.start({"Authorization": "Bearer a-key-of-nobody-0123456789abc"})
    assert answer.status_code == 401


async def test_a_reconnect_takes_the_callers_state_and_locale_as_a_new_flow_does(shim: TwoTenants) -> None:
    flow_id = (await shim.start(ACME, reference="user-7")).json()["flow_id"]
    connection_id = "003-001000000000000-10795421000000000"
    shim.connect(flow_id, connection_id)
    path = f"/v1/connections/{connection_id}/reconnect"
    answer = await shim.http.post(path, json={"state": "s-1", "locale": "de"}, headers=ACME)
    assert answer.status_code == 201, answer.text
    started = shim.store.events(answer.json()["flow_id"])[0]
    assert started["data"]["state"] == "s-1"
    assert started["data"]["reconnects"] == connection_id
    assert shim.store.get(answer.json()["flow_id"]).locale == "de"  # type: ignore[union-attr]
    for bad in ({"state": "x" * 257}, {"state": "caf\u00e9"}, {"locale": "x" * 36}):
        refused = await shim.http.post(path, json=bad, headers=ACME)
        assert refused.status_code == 422, bad
