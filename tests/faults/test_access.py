"""Access: who may call the shim, which flow a callback may claim, where a browser goes.

The shim app runs in-process against the test Redis and the session sandbox. Every refusal is a JSON
error and leaves everything as it was: no flow created, no task queued, no flow moved.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from schemathesis.python import asgi

from api_shim.app import create_app
from tests.support.fault_report import FaultReport
from tests.support.shim import RecordingEnqueuer
from tests.support.stack import API_KEY, RedisServer, Sandbox
from worker.config.settings import Settings, load_settings
from worker.flows.flow import BrowserUI, FlowState
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.tasks.runtime import lifetimes, redis_client

pytestmark = [pytest.mark.faults, pytest.mark.integration]

PREFIX = "access"
OTHER_KEY = "second-caller-key-abcdefgh"
TOKEN_A = "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"
TOKEN_B = "6a2d7164e92a89.22689557978380768440c3be3800c22db5a00994"
ALLOWED = "https://app.example,http://127.0.0.1:9"


@dataclass
class Shim:
    client: Any  # schemathesis' in-process client (requests-like)
    store: FlowStore
    enqueuer: RecordingEnqueuer
    refused: int = 0
    server_errors: int = 0

    def request(self, method: str, path: str, **options: Any) -> Any:
        response = self.client.request(method, path, allow_redirects=False, **options)
        if response.status_code >= 500:
            self.server_errors += 1
        if response.status_code >= 400:
            self.refused += 1
        return response

    @property
    def enqueued(self) -> list[tuple[str, FlowState]]:
        return self.enqueuer.enqueued

    def flow_keys(self) -> list[bytes]:
        return sorted(self.store.redis.scan_iter(f"{PREFIX}:flow:*"))

    def new_flow(self, return_url: str | None = "https://app.example/done?tab=social") -> str:
        flow_id = secrets.token_hex(20)
        return self.store.create(
            flow_id, "LinkedIn", "profile", "ref", return_url, BrowserUI.REDIRECT
        ).flow_id


@pytest.fixture(scope="module")
def config(redis_server: RedisServer, sandbox: Sandbox) -> Iterator[Settings]:
    settings = load_settings(
        redis_url=redis_server.url,
        channel_prefix=PREFIX,
        shim_api_keys=f"{API_KEY},{OTHER_KEY}",
        oktopost_base_url=sandbox.url,
        oktopost_rate_limit="100000/second",
        allowed_return_urls=ALLOWED,
        public_base_url="https://shim.example",
    )
    store = FlowStore(redis_client(settings), RedisNames(PREFIX), lifetimes(settings))
    _forget(store)
    yield settings
    _forget(store)


@pytest.fixture
def shim(config: Settings) -> Iterator[Shim]:
    """The app anew for each test: the in-process client ends the app's lifespan (its upstream client)."""
    store = FlowStore(redis_client(config), RedisNames(PREFIX), lifetimes(config))
    enqueuer = RecordingEnqueuer()
    app: Any = create_app(config, enqueuer=enqueuer)  # an ASGI app; schemathesis' annotation is narrower
    with asgi.get_client(app) as client:
        yield Shim(client, store, enqueuer)


def _forget(store: FlowStore) -> None:
    for key in store.redis.scan_iter(f"{PREFIX}:*"):
        store.redis.delete(key)


def assert_json_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code, response.text


# --- Bearer keys ---------------------------------------------------------------------------------------

BAD_AUTHORIZATIONS: list[dict[str, str]] = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer wrong-key"},
    {"Authorization": f"Bearer {API_KEY}x"},
    {"Authorization": f"Bearer {API_KEY[:-1]}"},
    {"Authorization": f"Bearer {API_KEY},{OTHER_KEY}"},
    {"Authorization": f"Basic {API_KEY}"},
    {"Authorization": f"Basic {base64.b64encode(f'x:{API_KEY}'.encode()).decode()}"},
    {"Authorization": API_KEY},
    {"Authorization": f"Token {API_KEY}"},
    {"X-Api-Key": API_KEY},
]


def test_missing_or_wrong_bearer_key_is_a_json_401_and_changes_nothing(
    shim: Shim, fault_report: FaultReport
) -> None:
    flow_id = shim.new_flow()
    routes: list[tuple[str, str, dict[str, Any]]] = [
        (
            "POST",
            "/v1/authorizations",
            {"json": {"network": "LinkedIn", "return_url": "https://app.example/"}},
        ),
        ("GET", f"/v1/authorizations/{flow_id}", {}),
        ("GET", "/v1/authorizations/0000000000000000000000000000000000000000", {}),
        ("POST", f"/v1/authorizations/{flow_id}/selection", {"json": {"ids": ["1"]}}),
    ]
    keys_before, requests = shim.flow_keys(), 0
    for headers in BAD_AUTHORIZATIONS:
        for method, path, options in routes:
            response = shim.request(method, path, headers=headers, **options)
            requests += 1
            assert_json_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
            assert API_KEY not in response.text
    assert shim.flow_keys() == keys_before
    assert shim.enqueued == []

    for key in (API_KEY, OTHER_KEY):  # every configured key works, the scheme in any case
        for scheme in ("Bearer", "bearer"):
            answer = shim.request(
                "GET", f"/v1/authorizations/{flow_id}", headers={"Authorization": f"{scheme} {key}"}
            )
            assert answer.status_code == 200, answer.text
    fault_report.record("7 access", server_errors=shim.server_errors, unauthorized_requests=requests)


# --- a callback claims its own flow only -----------------------------------------------------------------


def test_a_token_claimed_by_one_flow_cannot_attach_to_another(shim: Shim, fault_report: FaultReport) -> None:
    first, second = shim.new_flow(), shim.new_flow()
    claimed = shim.request("GET", f"/v1/callback/{first}?okt={TOKEN_A}")
    assert claimed.status_code == 303
    assert shim.enqueued == [(first, "verifying")]
    before = shim.store.get(second)

    replayed = shim.request("GET", f"/v1/callback/{second}?okt={TOKEN_A}")
    assert_json_error(replayed, 409, "token_already_used")
    assert shim.store.get(second) == before
    assert shim.enqueued == [(first, "verifying")]
    # its own token still works, and the first flow's repeated callback is answered as before
    assert shim.request("GET", f"/v1/callback/{second}?okt={TOKEN_B}").status_code == 303
    assert shim.request("GET", f"/v1/callback/{first}?okt={TOKEN_A}").status_code == 303
    assert shim.enqueued == [(first, "verifying"), (second, "verifying")]
    # nor can a second token take a claimed flow, nor a denial end it
    assert_json_error(shim.request("GET", f"/v1/callback/{first}?okt={TOKEN_B}"), 409, "flow_already_claimed")
    assert_json_error(
        shim.request("GET", f"/v1/callback/{first}?error=access_denied"), 409, "flow_already_claimed"
    )
    states = {flow_id: shim.store.get(flow_id) for flow_id in (first, second)}
    assert {flow.state for flow in states.values() if flow} == {FlowState.VERIFYING}
    assert len(shim.enqueued) == 2
    fault_report.record("7 access", flows=2, server_errors=shim.server_errors)


def test_the_callback_sends_the_browser_to_its_own_flows_return_url_only(shim: Shim) -> None:
    flow_id = shim.new_flow()
    tricks = (
        "return_url=https://evil.example/&redirect_uri=https://evil.example/&next=//evil.example&flow_id=x"
    )
    answer = shim.request("GET", f"/v1/callback/{flow_id}?okt={TOKEN_A[:-1]}c&{tricks}")
    assert answer.status_code == 303, answer.text
    location = urlsplit(answer.headers["location"])
    assert (location.scheme, location.netloc, location.path) == ("https", "app.example", "/done")
    assert parse_qs(location.query) == {"tab": ["social"], "flow_id": [flow_id], "status": ["processing"]}

    bare = shim.new_flow(return_url=None)  # no return_url: a small page, nowhere to be sent
    page = shim.request("GET", f"/v1/callback/{bare}?okt={TOKEN_A[:-1]}d&return_url=https://evil.example/")
    assert page.status_code == 200
    assert "evil" not in page.text
    assert "location" not in page.headers


# --- return_url ---------------------------------------------------------------------------------------

REFUSED_RETURN_URLS = [
    "https://evil.example/done",  # another host
    "https://app.example@evil.com/done",  # userinfo: the browser goes to evil.com
    "https://app.example:pw@evil.com/",
    "https://evil.com@app.example/",  # userinfo even when the host is right
    "javascript:alert(document.domain)",
    "JavaScript://app.example/%0aalert(1)",
    "data:text/html,<script>alert(1)</script>",
    "https://app.example.evil.com/done",  # a longer host with ours as its prefix
    "https://evilapp.example/",
    "https://app.example:8443/done",  # another port
    "http://app.example/done",  # http on a non-loopback host
    "http://127.0.0.1:10/done",  # loopback, but another port than the allowed one
    "//evil.com/done",  # scheme-relative
    "https:evil.com",
    "https:/evil.com/",
    "https:///evil.com",
    "https://evil.com\\@app.example/",
    "https://evil.com\\.app.example/",
    "https://evil.com#@app.example",
    "https://app.example/done#fragment",
    " https://app.example/done",
    "https://app.example/done\r\nLocation: https://evil.com",
    "https://app.example/\x00",
    "ftp://app.example/",
    "https://app.example:99999/",
    "https://[::1]/",
]


def test_return_url_tricks_are_refused_before_any_upstream_call(
    shim: Shim, sandbox: Sandbox, fault_report: FaultReport
) -> None:
    caller = {"Authorization": f"Bearer {API_KEY}"}
    calls_before = sandbox.stats()["v2_calls"]
    keys_before = shim.flow_keys()
    for url in REFUSED_RETURN_URLS:
        body = {"network": "LinkedIn", "return_url": url}
        answer = shim.request("POST", "/v1/authorizations", json=body, headers=caller)
        assert answer.status_code == 422, (url, answer.status_code, answer.text)
        assert answer.json()["error"]["code"] in ("return_url_not_allowed", "invalid_request"), (
            url,
            answer.text,
        )
    assert sandbox.stats()["v2_calls"] == calls_before
    assert shim.flow_keys() == keys_before

    for url in ("https://app.example/done?x=1", "HTTPS://App.Example:443/done", "http://127.0.0.1:9/back"):
        answer = shim.request(
            "POST", "/v1/authorizations", json={"network": "LinkedIn", "return_url": url}, headers=caller
        )
        assert answer.status_code == 201, (url, answer.text)
    fault_report.record(
        "7 access",
        flows=3,
        server_errors=shim.server_errors,
        return_urls_refused=len(REFUSED_RETURN_URLS),
    )
