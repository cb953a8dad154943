"""/openapi.json tells the truth: Schemathesis, with every one of its checks, against a shim process.

Schemathesis reads the shim's own /openapi.json and sends what it generates from it (its examples,
coverage, fuzzing and stateful phases: flows started by POST /v1/authorizations are followed into
their status, events, callback and selection routes). A check fails on any 5xx, a status or content
type the description does not list, a body or header that does not match its schema, a schema-valid
request refused or an invalid one accepted, an undeclared method not answered 405 with the right
`Allow`, an operation that answers without the Bearer key. The run is bounded (`MAX_EXAMPLES` per
operation, deterministic generation) so that it takes well under a minute and finds the same things on
every run.

What the shim needs and Schemathesis cannot guess is given to it:
- the caller's Bearer key, on every request (its own checks also send none, or a wrong one);
- a flow awaiting a selection, for the selection route (a flow started by the run is still awaiting
  its callback: no worker runs here), and a webhook endpoint, for its deliveries and replay routes
  (`WEBHOOK_ALLOWED_HOSTS` lets it point at a loopback address; nothing is delivered there);
- the event streams are read up to their first event (a flow's stream stays open until the flow ends).

What is relaxed, and why: the rules the routes apply at run time to a schema-valid request, which no
schema can state, answer 422 to a valid request there: a `return_url` whose origin is not among the
tenant's allowed ones, a webhook URL whose host does not resolve to a public address (registering or
changing an endpoint), selected ids that the flow was not offered, a page's cursor that the route did
not give. For those operations 422 counts as an acceptance. The hosted
pages (/connect/...) need the browser's cookie, which only a real callback gives: without it they are
the 403 page, which the run checks as such.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.stack import API_KEY, Pipeline, RedisServer, Sandbox, start_pipeline
from worker.events import EntityOffer
from worker.flows.flow import BrowserUI, FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 6  # per operation, in the fuzzing phase: about 400 requests in all with the others
RUN_SECONDS = 90  # the run's own bound: it takes 15 s, about 35 s on a loaded machine
ACCEPTED_WITH_422 = (
    "POST /v1/authorizations",
    "POST /v1/webhooks",
    "POST /v1/authorizations/{flow_id}/selection",
    "PATCH /v1/webhooks/{endpoint_id}",
    "GET /v1/webhooks/{endpoint_id}/deliveries",
    "GET /v1/connections",
    "POST /v1/connections/{connection_id}/reconnect",
)


@pytest.fixture(scope="module")
def shim(redis_server: RedisServer, sandbox: Sandbox) -> Iterator[Pipeline]:
    running = start_pipeline(
        redis_server.url, sandbox.url, workers=0, webhook_allowed_hosts="127.0.0.1", log_level="INFO"
    )
    yield running
    running.stop()


def test_the_shim_answers_only_what_its_openapi_describes(shim: Pipeline, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(_flow_awaiting_selection(shim), _webhook_endpoint(shim)))
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run"),
        f"{shim.shim_url}/openapi.json",
        *("--checks", "all", "--header", f"Authorization: Bearer {API_KEY}"),
        *("--max-examples", str(MAX_EXAMPLES), "--generation-deterministic", "--workers", "1"),
        *("--no-color", "--output-sanitize", "true"),
    ]
    operations = sum(
        len(path) for path in httpx.get(f"{shim.shim_url}/openapi.json").json()["paths"].values()
    )
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_SECONDS)
    assert run.returncode == 0, run.stdout[-12_000:] + run.stderr[-2_000:]
    assert f"Tested: {operations}\n" in run.stdout, run.stdout  # none skipped


def _config(flow_id: str, endpoint_id: str) -> str:
    accepted = (
        'checks.positive_data_acceptance.expected-statuses = ["2XX", "3XX", "401", "404", "409", "422"]'
    )
    operations = "".join(
        f'[[operations]]\ninclude-name = "{name}"\n{accepted}\n' for name in ACCEPTED_WITH_422
    )
    return f"""
max-stream-events = 1
request-timeout = 10

# a request the schema refuses may also be refused for its size: a query string past the shim's bound
[checks.negative_data_rejection]
expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "414", "415", "422", "428", "429", "5XX"
]

{operations}
[[operations]]
include-name = "POST /v1/authorizations/{{flow_id}}/selection"
parameters = {{ "flow_id" = "{flow_id}" }}

[[operations]]
include-name = "GET /v1/webhooks/{{endpoint_id}}/deliveries"
parameters = {{ "endpoint_id" = "{endpoint_id}" }}

[[operations]]
include-name = "POST /v1/webhooks/{{endpoint_id}}/replay"
parameters = {{ "endpoint_id" = "{endpoint_id}" }}
"""


def _flow_awaiting_selection(shim: Pipeline) -> str:
    """What the worker would have made of a flow whose callback came: Oktopost offered three pages."""
    store = FlowStore(shim.redis(), RedisNames(shim.prefix), Lifetimes())
    flow = store.create("f" * 40, "Facebook", "page", "openapi-truth", None, BrowserUI.HOSTED)
    assert store.claim_callback(flow, "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883").done
    store.take_work(flow.flow_id, "verifying-task", FlowState.VERIFYING)
    offers = [EntityOffer(id=f"1079542{i}", name=f"Page {i}", network="Facebook") for i in range(3)]
    verifying = store.get(flow.flow_id)
    assert verifying is not None
    assert store.offer_selection(verifying, offers, "verifying-task").done
    return flow.flow_id


def _webhook_endpoint(shim: Pipeline) -> str:
    answer = httpx.post(
        f"{shim.shim_url}/v1/webhooks", json={"url": "http://127.0.0.1:9/hooks"}, headers=shim.headers
    )
    assert answer.status_code == 201, answer.text
    endpoint_id: str = answer.json()["id"]
    return endpoint_id
