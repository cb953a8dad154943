"""The shim app in this process for the bad-input tests: requests sent straight into the ASGI app, each
answer checked (never a 5xx; a refusal is a JSON error, or a hosted page's HTML), and what a refused
request must leave as it is."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlsplit

from anyio.from_thread import BlockingPortal
from hypothesis import HealthCheck, settings

from tests.clocks import seen_from
from worker.config.settings import Settings
from worker.events import EntityOffer
from worker.flows.enqueuer import Enqueuer
from worker.flows.flow import BrowserUI, FlowState
from worker.flows.store import FlowStore

QUEUE = "oktopost-connect"
FUZZ = settings(
    deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True, max_examples=100
)


@dataclass
class InProcessShim:
    config: Settings
    store: FlowStore
    flows: dict[str, str]  # a flow in each state (and a fresh one awaiting its callback), by role
    enqueuer: Enqueuer  # on this module's broker: the flows' Redis, queue QUEUE
    client: Any = None  # requests to the app in this process (schemathesis' ASGI client), set per test
    caller: AppCaller | None = None  # the same app called straight, for the callback route's many requests
    requests: int = 0
    refused: int = 0
    last: tuple[Any, ...] | None = None
    statuses: dict[int, int] = field(default_factory=dict)

    def snapshot(self) -> tuple[Any, ...]:
        """What a refused request must leave as it is: the task queue, the flow indexes, each seeded flow
        (its state, seq, token fingerprint and token key). One Lua call, so thousands of requests can
        afford one each."""
        names = self.store.names
        keys = [QUEUE, names.deadlines, names.leases]
        for flow_id in self.flows.values():
            keys += [names.flow_state(flow_id), names.flow_token(flow_id)]
        return tuple(self.store.redis.eval(_SNAPSHOT, len(keys), *keys))

    def send(self, method: str, url: str) -> AppAnswer:
        caller = self.caller
        assert caller is not None
        return self.observe(lambda: caller.request(method, url))

    def observe(self, request: Callable[[], Any]) -> Any:
        """Makes the request (an httpx or requests response comes back) and checks what it left behind.

        Nothing else writes to this module's Redis database, so the state after one request is the
        state before the next: one snapshot per request.
        """
        if self.last is None:
            self.last = self.snapshot()
        response = request()
        self.requests += 1
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        check_answer(response)
        after = self.snapshot()
        if response.status_code >= 400:
            self.refused += 1
            assert after == self.last, (response.request.method, response.request.url, "changed state")
        if after[3] != b"awaiting_callback":  # the fresh flow (seeded first) was claimed or denied
            flow = self.store.create(
                _new_id(), "LinkedIn", "profile", None, "https://app.example/done", BrowserUI.REDIRECT
            )
            self.flows["awaiting"] = flow.flow_id
            after = self.snapshot()
        self.last = after
        return response


@dataclass
class AppAnswer:
    """What `AppCaller` gets back; shaped like the clients' responses where `check_answer` reads them."""

    status_code: int
    headers: dict[str, str]
    content: bytes
    request: Any

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class AppCaller:
    """Requests straight into the ASGI app, on one event loop of its own: no HTTP client in between, so
    thousands of generated callbacks cost little more than the route itself."""

    def __init__(self, app: Any, portal: BlockingPortal) -> None:
        self.app = app
        self.portal = portal

    def request(self, method: str, target: str) -> AppAnswer:
        return self.portal.call(self._call, method, target)

    async def _call(self, method: str, target: str) -> AppAnswer:
        path, _, query = target.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "https",
            "path": unquote(path),
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(b"host", b"shim.example")],
            "client": ("127.0.0.1", 40000),
            "server": ("shim.example", 443),
        }
        started: dict[str, Any] = {}
        body = bytearray()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.update(message)
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        await self.app(scope, receive, send)
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in started["headers"]}
        request = SimpleNamespace(method=method, url=target)
        return AppAnswer(started["status"], headers, bytes(body), request)


# KEYS: the queue, the deadlines and leases indexes, then each flow's hash and token key
_SNAPSHOT = """
local found = {redis.call("LLEN", KEYS[1]), redis.call("ZCARD", KEYS[2]), redis.call("ZCARD", KEYS[3])}
for i = 4, #KEYS, 2 do
  local flow = redis.call("HMGET", KEYS[i], "state", "seq", "token_fp")
  found[#found + 1] = flow[1] or ""
  found[#found + 1] = (flow[2] or "") .. "/" .. (flow[3] or "") .. "/" .. redis.call("EXISTS", KEYS[i + 1])
end
return found
"""


def check_answer(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400 and response.request.method != "HEAD":
        if _is_hosted_page(response):
            return  # the hosted pages refuse a browser with a page (their 403 and 404 pages say nothing)
        error = response.json()["error"]
        assert isinstance(error["code"], str), response.text
        assert isinstance(error["message"], str), response.text


def _is_hosted_page(response: Any) -> bool:
    path = urlsplit(str(response.request.url)).path
    content_type = response.headers.get("content-type") or ""  # schemathesis' answers: a list of values
    content_type = content_type if isinstance(content_type, str) else content_type[0]
    return path.startswith("/connect/") and content_type.startswith("text/html")


_counter = iter(range(10**9))


def _new_id() -> str:
    return f"{next(_counter):040x}"[-24:] + "f" * 16


def seed_flows(store: FlowStore) -> dict[str, str]:
    offers = [EntityOffer(id=f"1079542{i}", name=f"Page {i}", network="Facebook") for i in range(3)]
    flows = {}
    for role in ("awaiting", "verifying", "selection", "completing", "completed", "failed", "expired"):
        entity_type = "page" if role in ("selection", "completing") else "profile"
        creator = seen_from(store, -10_000 if role == "expired" else 0)  # "expired": long past its deadline
        flow = creator.create(
            _new_id(), "Facebook", entity_type, "ref", "https://app.example/done", BrowserUI.REDIRECT
        )
        if role in ("verifying", "selection", "completing", "completed"):
            store.claim_callback(flow, f"591c6053d81978.{role:0>40}"[:55])
            flow = store.get(flow.flow_id) or flow
        if role in ("selection", "completing"):
            store.take_work(flow.flow_id, "fuzz-task", FlowState.VERIFYING)
            store.offer_selection(flow, offers, "fuzz-task")
            flow = store.get(flow.flow_id) or flow
        if role == "completing":
            store.submit_selection(flow, ["10795421"])
        if role == "completed":
            store.take_work(flow.flow_id, "fuzz-task", FlowState.COMPLETING)
            store.complete(flow, [], "fuzz-task")
        if role == "failed":
            store.deny(flow, "no")
        if role == "expired":
            store.expire(flow)
        flows[role] = flow.flow_id
    return flows
