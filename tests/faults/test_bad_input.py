"""Bad input, generated: schemathesis against the shim's /openapi.json and hypothesis on the callback route.

No request gets a 5xx; every refusal is a JSON error; a refused request enqueues nothing and changes no
flow (the Celery queue list `celery` and the flow store are compared before and after each one).
Most requests go to the shim app in-process (fast); a share goes over real sockets to a shim process,
which also shows that oversized bodies, headers and URLs are refused early.
"""

from __future__ import annotations

import json
import socket
import string
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
import schemathesis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.python import asgi

import worker.tasks  # noqa: F401 - defines our tasks, which every Celery app shares
from api_shim.app import create_app
from tests.conftest import API_KEY, Pipeline, RedisServer, Sandbox, start_pipeline
from tests.faults.conftest import FaultReport
from worker.events import EntityOffer
from worker.keys import RedisNames
from worker.queueing import Enqueuer
from worker.runtime import lifetimes, redis_client
from worker.settings import Settings, load_settings
from worker.store import FlowStore

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FUZZ_DB = 9  # the session redis-server's database for this module alone: `celery` and `oktopost:*` are ours
QUEUE = "oktopost-connect"
SCHEMA_CASES = 800  # in-process, through every route in /openapi.json
CALLBACK_CASES = 9000  # in-process, the callback route
SOCKET_CASES = 200  # over real sockets to a shim process
CALLBACKS_PER_EXAMPLE = 10  # hypothesis' own cost is per example: each sends this many
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
            flow = self.store.create(_new_id(), "LinkedIn", "profile", None, "https://app.example/done")
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
        error = response.json()["error"]
        assert isinstance(error["code"], str), response.text
        assert isinstance(error["message"], str), response.text


_counter = iter(range(10**9))


def _new_id() -> str:
    return f"{next(_counter):040x}"[-24:] + "f" * 16


@pytest.fixture(scope="module")
def fuzz_world(redis_server: RedisServer, sandbox: Sandbox) -> Iterator[InProcessShim]:
    """The shim's settings, store, seeded flows and broker for this module; each test builds its own app."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{FUZZ_DB}"
    config = load_settings(
        redis_url=url,
        shim_api_keys=API_KEY,
        oktopost_base_url=sandbox.url,
        oktopost_rate_limit="100000/second",
        allowed_return_urls="https://app.example",
        public_base_url="https://shim.example",
    )
    store = FlowStore(redis_client(config), RedisNames(config.channel_prefix), lifetimes(config))
    store.redis.flushdb()
    producer = Celery("fuzz-producer", broker=url, set_as_current=False)
    producer.conf.task_default_queue = QUEUE
    yield InProcessShim(config, store, _seed(store), Enqueuer(producer, url))
    producer.close()
    store.redis.flushdb()


@pytest.fixture
def shim(fuzz_world: InProcessShim) -> Iterator[InProcessShim]:
    # schemathesis ends an in-process app's lifespan after each test (closing its upstream client)
    app: Any = create_app(fuzz_world.config, enqueuer=fuzz_world.enqueuer)
    with asgi.get_client(app) as client, start_blocking_portal() as portal:
        fuzz_world.client = client
        fuzz_world.caller = AppCaller(app, portal)
        yield fuzz_world


def _seed(store: FlowStore) -> dict[str, str]:
    offers = [EntityOffer(id=f"1079542{i}", name=f"Page {i}", network="Facebook") for i in range(3)]
    flows = {}
    for role in ("awaiting", "verifying", "selection", "completing", "completed", "failed", "expired"):
        entity_type = "page" if role in ("selection", "completing") else "profile"
        now = time.time() - (10_000 if role == "expired" else 0)
        flow = store.create(_new_id(), "Facebook", entity_type, "ref", "https://app.example/done", now=now)
        if role in ("verifying", "selection", "completing", "completed"):
            store.claim_callback(flow, f"591c6053d81978.{role:0>40}"[:55])
            flow = store.get(flow.flow_id) or flow
        if role in ("selection", "completing"):
            store.offer_selection(flow, offers)
            flow = store.get(flow.flow_id) or flow
        if role == "completing":
            store.submit_selection(flow, ["10795421"])
        if role == "completed":
            store.complete(flow, [])
        if role == "failed":
            store.fail(flow, "authorization_denied", "no", False, 0)
        if role == "expired":
            store.expire(flow)
        flows[role] = flow.flow_id
    return flows


# --- hypothesis on the callback route -----------------------------------------------------------------

_TOKENISH = string.ascii_letters + string.digits + "._~-"
tokens = st.one_of(
    st.text(alphabet=_TOKENISH, min_size=0, max_size=300),
    st.text(max_size=40),
    st.just("591c6053d81978.11578446867279657339b29ad2799b11"),
    st.sampled_from(["", " ", "%00", "\x00", "a" * 257, "../../etc", "<script>", "okt", "=&=", "\u202e"]),
)
parameters = st.lists(
    st.tuples(
        st.sampled_from(
            ["okt", "okt", "okt", "error", "state", "flow_id", "OKT", "okt[]", "", "error_description"]
        ),
        tokens,
    ),
    max_size=4,
)
roles = st.sampled_from(
    ["awaiting", "verifying", "selection", "completing", "completed", "failed", "expired"]
)
methods = st.sampled_from(["GET"] * 9 + ["HEAD", "POST"])
flow_ids = st.one_of(
    roles,
    st.text(alphabet="0123456789abcdef", min_size=40, max_size=40),
    st.text(max_size=80),
    st.sampled_from(["", ".", "..", "%2e%2e", "-" * 20, "a" * 65, "A" * 16]),
)
callbacks_ = st.tuples(flow_ids, parameters, methods)  # what one browser (or attacker) sends


def test_callback_route_never_5xx_and_a_refused_callback_enqueues_nothing(
    shim: InProcessShim, fault_report: FaultReport
) -> None:
    started = shim.requests

    @settings(FUZZ, max_examples=CALLBACK_CASES // CALLBACKS_PER_EXAMPLE)
    @given(callbacks=st.lists(callbacks_, min_size=CALLBACKS_PER_EXAMPLE, max_size=CALLBACKS_PER_EXAMPLE))
    def callback(callbacks: list[tuple[str, list[tuple[str, str]], str]]) -> None:
        for flow, pairs, method in callbacks:
            flow_id = shim.flows.get(flow, flow)
            query = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in pairs)
            path = f"/v1/callback/{quote(flow_id, safe='')}" + (f"?{query}" if query else "")
            response = shim.send(method, path)
            if response.status_code == 303:
                assert response.headers["location"].startswith("https://app.example/done?")

    callback()
    fault_report.record(
        "5 bad input",
        faults_injected=shim.requests - started,
        callback_requests=shim.requests - started,
        callback_statuses=dict(sorted(shim.statuses.items())),
    )
    assert shim.requests - started >= CALLBACK_CASES * 0.9


# --- schemathesis against /openapi.json -----------------------------------------------------------------


def test_every_route_in_the_schema_never_5xx_and_refusals_change_nothing(
    shim: InProcessShim, fault_report: FaultReport
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", shim.client.app)
    caller = {"authorization": f"Bearer {API_KEY}"}
    selection = schema["/v1/authorizations/{flow_id}/selection"]["POST"]
    strategy = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE, headers=caller),
        schema.as_strategy(GenerationMode.NEGATIVE, headers=caller),
        schema.as_strategy(GenerationMode.POSITIVE),  # whatever Authorization it makes up: 401
        selection.as_strategy(
            GenerationMode.POSITIVE, headers=caller, path_parameters={"flow_id": shim.flows["selection"]}
        ),
        selection.as_strategy(
            GenerationMode.NEGATIVE, headers=caller, path_parameters={"flow_id": shim.flows["selection"]}
        ),
    )
    started = shim.requests

    @settings(FUZZ, max_examples=SCHEMA_CASES)
    @given(case=strategy)
    def each_case(case: schemathesis.Case) -> None:
        shim.observe(case.call)

    each_case()
    fault_report.record(
        "5 bad input", faults_injected=shim.requests - started, schema_requests=shim.requests - started
    )
    assert shim.requests - started >= SCHEMA_CASES * 0.9


# --- over real sockets: a shim process ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shim_process(redis_server: RedisServer, sandbox: Sandbox) -> Iterator[Pipeline]:
    running = start_pipeline(redis_server.url, sandbox.url, workers=0)
    yield running
    running.stop()


def test_generated_requests_over_sockets_never_5xx(shim_process: Pipeline, fault_report: FaultReport) -> None:
    schema = schemathesis.openapi.from_url(f"{shim_process.shim_url}/openapi.json")
    caller = {"authorization": f"Bearer {API_KEY}"}
    strategy = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE, headers=caller),
        schema.as_strategy(GenerationMode.NEGATIVE, headers=caller),
    )
    redis: Any = shim_process.redis()
    names = RedisNames(shim_process.prefix)

    def indexes() -> list[int]:
        return [
            redis.llen(f"{shim_process.prefix}.oktopost-connect"),
            redis.zcard(names.deadlines),
            redis.zcard(names.leases),
        ]

    sent = 0

    @settings(FUZZ, max_examples=SOCKET_CASES)
    @given(case=strategy)
    def each_case(case: schemathesis.Case) -> None:
        nonlocal sent
        before = indexes()
        response = case.call(base_url=shim_process.shim_url, timeout=10)
        sent += 1
        check_answer(response)
        if response.status_code >= 400:
            assert indexes() == before

    each_case()
    fault_report.record("5 bad input", faults_injected=sent, socket_requests=sent)
    assert sent >= SOCKET_CASES * 0.9


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


def raw_request(url: str, head: bytes, body_chunks: Sequence[bytes] = (), timeout: float = 5.0) -> RawAnswer:
    """Sends `head` (and what body it is given) over a plain socket and reads the answer, without waiting to
    send more: a server that refuses early answers before the body it was promised has arrived."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(head)
        for chunk in body_chunks:
            try:
                connection.sendall(chunk)
            except OSError:  # the server answered and closed while we were still sending
                break
        received = b""
        while b"\r\n\r\n" not in received or not _complete(received):
            try:
                data = connection.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
    seconds = time.monotonic() - started
    head_part, _, body = received.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return RawAnswer(int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body, seconds)


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            return len(body) >= int(line.split(":")[1])
    return True


def _head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_oversized_bodies_headers_and_urls_are_refused_early(
    shim_process: Pipeline, fault_report: FaultReport
) -> None:
    url = shim_process.shim_url
    auth = ("Authorization", f"Bearer {API_KEY}")
    json_body = [auth, ("Content-Type", "application/json")]
    big = 10 * 1024 * 1024
    answers = {
        # promised 10 MiB, sent 1 KiB: the answer must not wait for the rest
        "declared body": raw_request(
            url,
            _head("POST", "/v1/authorizations", [*json_body, ("Content-Length", str(big))]),
            [b" " * 1024],
        ),
        "chunked body": raw_request(
            url,
            _head("POST", "/v1/authorizations", [*json_body, ("Transfer-Encoding", "chunked")]),
            [f"{32768:x}\r\n".encode() + b" " * 32768 + b"\r\n" for _ in range(8)],
        ),
        "one large header": raw_request(
            url, _head("GET", "/v1/authorizations/x", [auth, ("X-Filler", "a" * 13_000)])
        ),
        "many headers": raw_request(
            url, _head("GET", "/healthz", [(f"X-Filler-{i}", "a" * 40) for i in range(300)])
        ),
        "huge header": raw_request(url, _head("GET", "/healthz", [("X-Filler", "a" * 40_000)])),
        "long query": raw_request(url, _head("GET", "/v1/callback/" + "a" * 40 + "?okt=" + "b" * 6000, [])),
        "huge query": raw_request(url, _head("GET", "/v1/callback/" + "a" * 40 + "?okt=" + "b" * 40_000, [])),
        "long path": raw_request(url, _head("GET", "/v1/callback/" + "a" * 6000, [])),
    }
    expected = {
        "declared body": {413},
        "chunked body": {413},
        "one large header": {431},
        "many headers": {431},
        "huge header": {400, 431},
        "long query": {414},
        "huge query": {400, 414},
        "long path": {414},
    }
    statuses = {name: answer.status for name, answer in answers.items()}
    fault_report.record(
        "5 bad input",
        faults_injected=len(answers),
        server_errors=sum(status >= 500 for status in statuses.values()),
        oversized=statuses,
    )
    for name, answer in answers.items():
        assert answer.status in expected[name], (name, answer)
        assert answer.seconds < 2.0, (name, answer.seconds)
        if answer.status != 400:  # uvicorn's own 400 for a request head over 16 KiB is plain text
            assert httpx.Response(answer.status, content=answer.body).json()["error"]["code"], (name, answer)
    ok = raw_request(url, _head("GET", "/v1/callback/" + "a" * 40 + "?okt=" + "b" * 200, []))
    assert ok.status == 404  # a request within the limits goes through
