"""Bad input, generated, in process: schemathesis against the shim's /openapi.json and hypothesis on the
callback route.

No request gets a 5xx; every refusal is a JSON error; a refused request enqueues nothing and changes no
flow (the Celery queue and the flow store are compared before and after each one). The requests go to
the shim app in this process, so there can be thousands of them; test_bad_input_sockets.py sends a
share over real sockets."""

from __future__ import annotations

import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from anyio.from_thread import start_blocking_portal
from celery import Celery
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.python import asgi

import worker.tasks.celery_tasks  # noqa: F401 - defines our tasks, which every Celery app shares
from api_shim.app import create_app
from tests.support.fault_report import FaultReport
from tests.support.in_process_shim import FUZZ, QUEUE, AppCaller, InProcessShim, seed_flows
from tests.support.stack import API_KEY, RedisServer, Sandbox
from worker.config.settings import load_settings
from worker.flows.enqueuer import Enqueuer
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.tasks.runtime import lifetimes, redis_client

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FUZZ_DB = 9  # the session redis-server's database for this module alone: its queue and flows are ours
SCHEMA_CASES = 800  # in-process, through every route in /openapi.json
CALLBACK_CASES = 9000  # in-process, the callback route
CALLBACKS_PER_EXAMPLE = 10  # hypothesis' own cost is per example: each sends this many


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
    yield InProcessShim(config, store, seed_flows(store), Enqueuer(producer, url))
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
