"""Redis goes away and comes back (CONTRACT section 8: a callback answered 303 is never lost while Redis
keeps its data, AOF in production).

While it is down the shim answers quickly with a JSON 503, never a 500 or a hang, and /readyz fails;
once it is back the same shim and worker processes carry on. With AOF on, callbacks queued before a
restart are verified after it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import (
    Pipeline,
    Sandbox,
    start_pipeline,
    start_redis,
    start_sandbox,
    stop_redis,
)
from tests.faults.conftest import FaultReport
from tests.faults.ledger import Ledger, stop_stack

pytestmark = [pytest.mark.faults, pytest.mark.integration]

AOF = ["--appendonly", "yes", "--appendfsync", "everysec"]
ANSWER_WITHIN_S = 2.5  # "no hang past a couple of seconds"
TOKEN_TTL = 40


class RestartableRedis:
    """A redis-server with AOF in a directory of its own, stopped and started again on the same port."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="okc-aof-")
        self.server = start_redis(AOF, directory=self.directory)
        self.restarts = 0

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        stop_redis(self.server)  # SIGTERM: Redis writes what the AOF still holds, then exits

    def start(self) -> None:
        self.server = start_redis(AOF, port=self.server.port, directory=self.directory)
        self.restarts += 1


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Pipeline, Sandbox, RestartableRedis]]:
    server = RestartableRedis()
    sandbox = start_sandbox()
    pipeline = start_pipeline(server.url, sandbox.url, token_ttl_seconds=TOKEN_TTL)
    yield pipeline, sandbox, server
    stop_stack(pipeline, sandbox)
    stop_redis(server.server)


def test_redis_down_is_a_quick_json_503_and_shim_and_worker_recover(
    stack: tuple[Pipeline, Sandbox, RestartableRedis], fault_report: FaultReport
) -> None:
    pipeline, _, server = stack
    ledger = Ledger(pipeline)
    before = ledger.start()
    ledger.consent(before)
    waiting = ledger.start(entity_type="page")
    ledger.callback(waiting)
    offer = ledger.wait_for([waiting], "selection.required")[waiting.flow_id]["data"]["entities"]

    server.stop()
    outage: dict[str, tuple[int, float, dict[str, Any] | None]] = {}
    with httpx.Client(base_url=pipeline.shim_url, timeout=10) as client:
        requests = {
            "start": ("POST", "/v1/authorizations", {"json": {"network": "LinkedIn"}}, True),
            "callback": ("GET", before.callback_url.removeprefix(pipeline.shim_url), {}, False),
            "status": ("GET", f"/v1/authorizations/{before.flow_id}", {}, True),
            "selection": ("POST", f"/v1/authorizations/{waiting.flow_id}/selection",
                          {"json": {"ids": [offer[1]["id"]]}}, True),
            "readyz": ("GET", "/readyz", {}, False),
            "healthz": ("GET", "/healthz", {}, False),
            "metrics": ("GET", "/metrics", {}, False),
        }  # fmt: skip
        for name, (method, path, options, as_caller) in requests.items():
            started = time.monotonic()
            headers = pipeline.headers if as_caller else {}
            answer = client.request(method, path, headers=headers, **options)  # type: ignore[arg-type]
            body = answer.json() if answer.headers.get("content-type") == "application/json" else None
            outage[name] = (answer.status_code, time.monotonic() - started, body)
    server.start()

    recovered_in = _ready_again(pipeline.shim_url)
    ledger.callback(before)
    ledger.select(waiting, [offer[1]["id"]])
    after = ledger.start(network="Twitter")
    ledger.callback(after)
    events = ledger.outcomes([before, waiting, after], timeout=20)
    tally = ledger.tally(events)
    unexpected = [name for name, (status, _, _) in outage.items() if status >= 500 and name != "readyz"]
    dependent = ("start", "callback", "status", "selection")
    fault_report.record(
        "2 redis restart",
        **tally.figures(),
        faults_injected=1,
        server_errors=ledger.server_errors + sum(outage[name][0] == 500 for name in outage),
        answered_503_while_down=sorted(name for name in outage if outage[name][0] == 503),
        slowest_answer_while_down_s=round(max(seconds for _, seconds, _ in outage.values()), 2),
        ready_again_after_s=round(recovered_in, 2),
    )
    ledger.close()

    for name in dependent:
        status, seconds, body = outage[name]
        assert status == 503, (name, outage)
        assert body is not None, (name, outage)
        assert body["error"]["code"] == "unavailable", (name, outage)
        assert seconds <= ANSWER_WITHIN_S, (name, seconds)
    assert outage["readyz"][0] == 503, outage["readyz"]
    assert outage["readyz"][1] <= ANSWER_WITHIN_S, outage["readyz"]
    assert outage["healthz"][0] == 200, outage
    assert outage["metrics"][0] == 200, outage
    assert set(unexpected) == set(dependent), outage
    assert tally.lost == [], tally
    assert tally.duplicated == [], tally
    assert tally.by_outcome == {"connection.completed": 3}, tally.by_outcome
    assert ledger.server_errors == 0


def test_callbacks_queued_before_a_restart_complete_after_it(
    stack: tuple[Pipeline, Sandbox, RestartableRedis], fault_report: FaultReport
) -> None:
    pipeline, _, server = stack
    for worker in pipeline.workers:
        worker.stop()
    pipeline.workers.clear()
    ledger = Ledger(pipeline)
    profiles = [
        ledger.start(network) for network in ("Twitter", "Facebook", "LinkedIn", "YouTube", "Instagram")
    ]
    pages = [ledger.start(network, "page") for network in ("Facebook", "LinkedIn", "Instagram")]
    for flow in ledger.flows:
        ledger.callback(flow)
    queue = f"{pipeline.prefix}.oktopost-connect"
    queued_before = server.server.client().llen(queue)

    server.stop()
    server.start()
    queued_after = server.server.client().llen(queue)
    _ready_again(pipeline.shim_url)
    pipeline.start_worker()
    offers = ledger.wait_for(pages, "selection.required", timeout=20)
    for flow in pages:
        ledger.select(flow, [offers[flow.flow_id]["data"]["entities"][2]["id"]])
    events = ledger.outcomes(ledger.flows, timeout=20)
    tally = ledger.tally(events)
    fault_report.record(
        "2 redis restart",
        **tally.figures(),
        faults_injected=1,
        server_errors=ledger.server_errors,
        tasks_queued_across_the_restart=queued_after,
    )
    ledger.close()

    assert queued_before == queued_after == len(profiles) + len(pages)
    assert tally.lost == [], tally
    assert tally.duplicated == [], tally
    assert tally.by_outcome == {"connection.completed": len(ledger.flows)}, tally.by_outcome
    assert ledger.server_errors == 0


def _ready_again(shim_url: str, timeout: float = 15.0) -> float:
    """Seconds until /readyz answers 200 again; fails the test after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if httpx.get(f"{shim_url}/readyz", timeout=3).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"/readyz still fails {timeout}s after Redis came back")
