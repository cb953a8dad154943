"""Redis goes away and comes back: a callback answered 303 is never lost while Redis keeps its data (AOF
in production).

While it is down the shim answers quickly with a JSON 503, never a 500 or a hang, and /readyz fails;
once it is back the same shim and worker processes carry on. With AOF on, callbacks queued before a
restart are verified after it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.fault_report import FaultReport
from tests.support.ledger import Ledger, TrackedFlow, start_stack
from tests.support.redis_outage import RestartableRedis, ShimRequest, TimedAnswer, timed_answers
from tests.support.stack import Pipeline, Sandbox

pytestmark = [pytest.mark.faults, pytest.mark.integration]

AOF = ["--appendonly", "yes", "--appendfsync", "everysec"]
ANSWER_WITHIN_S = 2.5  # "no hang past a couple of seconds"
TOKEN_TTL = 40
DEPENDENT = ("start", "callback", "status", "selection")  # the routes that need Redis


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Pipeline, Sandbox, RestartableRedis]]:
    with contextlib.ExitStack() as started:
        server = RestartableRedis(AOF)
        started.callback(server.stop)
        pipeline, sandbox = start_stack(started, server.url, quickly=True, token_ttl_seconds=TOKEN_TTL)
        yield pipeline, sandbox, server


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
    outage = timed_answers(pipeline, _every_kind_of_request(pipeline, before, waiting, offer[1]["id"]), 10)
    server.start()

    recovered_in = _ready_again(pipeline.shim_url)
    ledger.callback(before)
    ledger.select(waiting, [offer[1]["id"]])
    after = ledger.start(network="Twitter")
    ledger.callback(after)
    events = ledger.outcomes([before, waiting, after], timeout=20)
    tally = ledger.tally(events)
    unexpected = [name for name, answer in outage.items() if answer.status >= 500 and name != "readyz"]
    fault_report.record(
        "2 redis restart",
        **tally.figures(),
        faults_injected=1,
        server_errors=ledger.server_errors + sum(answer.status == 500 for answer in outage.values()),
        answered_503_while_down=sorted(name for name, answer in outage.items() if answer.status == 503),
        slowest_answer_while_down_s=round(max(answer.seconds for answer in outage.values()), 2),
        ready_again_after_s=round(recovered_in, 2),
    )
    ledger.close()

    _assert_quick_json_503s_where_redis_is_needed(outage)
    assert set(unexpected) == set(DEPENDENT), outage
    assert tally.lost == [], tally
    assert tally.duplicated == [], tally
    assert tally.by_outcome == {"connection.completed": 3}, tally.by_outcome
    assert ledger.server_errors == 0


def _every_kind_of_request(
    pipeline: Pipeline, before: TrackedFlow, waiting: TrackedFlow, offered_id: str
) -> dict[str, ShimRequest]:
    """A request to each route: `before` is consented to, `waiting` awaits its selection."""
    return {
        "start": ShimRequest("POST", "/v1/authorizations", {"network": "LinkedIn"}, as_caller=True),
        "callback": ShimRequest("GET", before.callback_url.removeprefix(pipeline.shim_url)),
        "status": ShimRequest("GET", f"/v1/authorizations/{before.flow_id}", as_caller=True),
        "selection": ShimRequest(
            "POST", f"/v1/authorizations/{waiting.flow_id}/selection", {"ids": [offered_id]}, as_caller=True
        ),
        "readyz": ShimRequest("GET", "/readyz"),
        "healthz": ShimRequest("GET", "/healthz"),
        "metrics": ShimRequest("GET", "/metrics"),
    }


def _assert_quick_json_503s_where_redis_is_needed(outage: dict[str, TimedAnswer]) -> None:
    for name in DEPENDENT:
        answer = outage[name]
        assert answer.status == 503, (name, outage)
        assert answer.body is not None, (name, outage)
        assert answer.body["error"]["code"] == "unavailable", (name, outage)
        assert answer.seconds <= ANSWER_WITHIN_S, (name, answer.seconds)
    assert outage["readyz"].status == 503, outage["readyz"]
    assert outage["readyz"].seconds <= ANSWER_WITHIN_S, outage["readyz"]
    assert outage["healthz"].status == 200, outage
    assert outage["metrics"].status == 200, outage


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
