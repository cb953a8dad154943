"""Bad input, generated: schemathesis against the shim's /openapi.json and hypothesis on the callback route.

No request gets a 5xx; every refusal is a JSON error; a refused request enqueues nothing and changes no
flow (the Celery queue list `celery` and the flow store are compared before and after each one).
Most requests go to the shim app in-process (fast); a share goes over real sockets to a shim process,
which also shows that oversized bodies, headers and URLs are refused early.
"""

from __future__ import annotations

import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.python import asgi

import api_shim.app
from tests.conftest import API_KEY, RedisServer, Sandbox
from tests.faults.conftest import FaultReport
from worker.events import EntityOffer
from worker.flows import FlowState, FlowStore
from worker.keys import RedisNames
from worker.runtime import lifetimes, redis_client
from worker.settings import load_settings

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FUZZ_DB = 9  # the session redis-server's database for this module alone: `celery` and `oktopost:*` are ours
QUEUE = "celery"
SCHEMA_CASES = 300  # in-process, through every route in /openapi.json
CALLBACK_CASES = 500  # in-process, the callback route
SOCKET_CASES = 400  # over real sockets to a shim process
FUZZ = settings(
    deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True, max_examples=100
)


@dataclass
class InProcessShim:
    client: asgi.ASGIClient  # requests to the app in this process, on schemathesis' event loop
    store: FlowStore
    flows: dict[str, str]  # a flow in each state (and a fresh one awaiting its callback), by role
    tokens: list[str]
    requests: int = 0
    refused: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def snapshot(self) -> tuple[Any, ...]:
        """What a refused request must leave as it was: the task queue, the flow indexes, every seeded flow."""
        names = self.store.names
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.llen(QUEUE).zcard(names.deadlines).zcard(names.leases)
        for flow_id in self.flows.values():
            pipe.hmget(names.flow_state(flow_id), "state", "seq", "token_fp").exists(
                names.flow_token(flow_id)
            )
        return tuple(str(item) for item in pipe.execute())

    def send(self, method: str, url: str, **options: Any) -> Any:
        return self.observe(lambda: self.client.request(method, url, **options))

    def observe(self, request: Callable[[], Any]) -> Any:
        """Makes the request (an httpx or requests response comes back) and checks what it left behind."""
        before = self.snapshot()
        response = request()
        self.requests += 1
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        check_answer(response)
        if response.status_code >= 400:
            self.refused += 1
            assert self.snapshot() == before, f"refused {method} {url} changed the queue or a flow"
        self.replenish()
        return response

    def replenish(self) -> None:
        """A fresh flow awaiting its callback, once the last one was claimed or denied."""
        current = self.store.get(self.flows["awaiting"])
        if current is None or current.state is not FlowState.AWAITING_CALLBACK:
            self.flows["awaiting"] = self.store.create(_new_id(), "LinkedIn", "profile", None, None).flow_id


def check_answer(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400 and response.request.method != "HEAD":
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), response.text


_counter = iter(range(10**9))


def _new_id() -> str:
    return f"{next(_counter):040x}"[-24:] + "f" * 16


@pytest.fixture(scope="module")
def shim(redis_server: RedisServer, sandbox: Sandbox) -> Iterator[InProcessShim]:
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

    def enqueue(flow_id: str, state: FlowState) -> None:  # worker.tasks.enqueue, on this module's broker
        task = "oktopost.complete" if state is FlowState.COMPLETING else "oktopost.verify"
        producer.send_task(task, args=[flow_id], queue=QUEUE)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(api_shim.app, "enqueue", enqueue)
        with asgi.get_client(api_shim.app.create_app(config)) as client:
            yield InProcessShim(
                client, store, _seed(store), ["591c6053d81978.11578446867279657339b29ad2799b11"]
            )
    producer.close()
    store.redis.flushdb()


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
flow_ids = st.one_of(
    roles,
    st.text(alphabet="0123456789abcdef", min_size=40, max_size=40),
    st.text(max_size=80),
    st.sampled_from(["", ".", "..", "%2e%2e", "-" * 20, "a" * 65, "A" * 16]),
)


def test_callback_route_never_5xx_and_a_refused_callback_enqueues_nothing(
    shim: InProcessShim, fault_report: FaultReport
) -> None:
    started = shim.requests

    @settings(FUZZ, max_examples=CALLBACK_CASES)
    @given(flow=flow_ids, pairs=parameters, method=st.sampled_from(["GET"] * 9 + ["HEAD", "POST"]))
    def callback(flow: str, pairs: list[tuple[str, str]], method: str) -> None:
        flow_id = shim.flows.get(flow, flow)
        query = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in pairs)
        path = f"/v1/callback/{quote(flow_id, safe='')}" + (f"?{query}" if query else "")
        response = shim.send(method, path, allow_redirects=False)
        if response.status_code == 303:
            assert response.headers["location"].startswith("https://app.example/done?")

    callback()
    fault_report.record(
        "5 bad input", faults_injected=shim.requests - started, callback_requests=shim.requests - started
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
