"""Redis that stops answering without closing its connections (SIGSTOP: a stalled host, a partition).

Harder than a Redis that is down, where connections are refused at once: here every command waits for
an answer that does not come. The shim still answers within a couple of seconds, with a JSON 503, and
/readyz fails; when Redis answers again the same shim and worker processes carry on and every flow
claimed before the stall completes once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import (
    Pipeline,
    RedisServer,
    Sandbox,
    start_pipeline,
    start_redis,
    start_sandbox,
    stop_redis,
)
from tests.faults.conftest import FaultReport
from tests.faults.ledger import Ledger

pytestmark = [pytest.mark.faults, pytest.mark.integration]

ANSWER_WITHIN_S = 2.0
STALL_S = 4.0


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Pipeline, Sandbox, RedisServer]]:
    server = start_redis()
    sandbox = start_sandbox()
    pipeline = start_pipeline(server.url, sandbox.url, token_ttl_seconds=40)
    yield pipeline, sandbox, server
    pipeline.stop()
    sandbox.process.stop()
    stop_redis(server)


def test_a_stalled_redis_gets_quick_json_503s_and_everything_carries_on_after(
    stack: tuple[Pipeline, Sandbox, RedisServer], fault_report: FaultReport
) -> None:
    pipeline, _, server = stack
    assert server.process is not None
    ledger = Ledger(pipeline)
    before = [ledger.start(), ledger.start("Twitter")]
    for flow in before:
        ledger.consent(flow)
    processes = [pipeline.shim, *pipeline.workers]

    os.kill(server.process.pid, signal.SIGSTOP)
    stalled_at = time.monotonic()
    answers: dict[str, tuple[int, float, str]] = {}
    try:
        with httpx.Client(base_url=pipeline.shim_url, timeout=30) as client:
            requests = {
                "readyz": ("GET", "/readyz", {}, False),
                "callback": ("GET", before[0].callback_url.removeprefix(pipeline.shim_url), {}, False),
                "status": ("GET", f"/v1/authorizations/{before[1].flow_id}", {}, True),
                "start": ("POST", "/v1/authorizations", {"json": {"network": "LinkedIn"}}, True),
            }
            for name, (method, path, options, as_caller) in requests.items():
                started = time.monotonic()
                headers = pipeline.headers if as_caller else {}
                answer = client.request(method, path, headers=headers, **options)  # type: ignore[arg-type]
                answers[name] = (answer.status_code, time.monotonic() - started, answer.text)
        time.sleep(max(0.0, STALL_S - (time.monotonic() - stalled_at)))
    finally:
        os.kill(server.process.pid, signal.SIGCONT)

    for flow in before:  # the same callbacks, now that Redis answers again
        ledger.callback(flow)
    after = ledger.start("Facebook")
    ledger.callback(after)
    events = ledger.outcomes([*before, after], timeout=30)
    tally = ledger.tally(events)
    fault_report.record(
        "2 redis restart",
        flows=tally.flows,
        faults_injected=1,
        lost=len(tally.lost),
        duplicated_terminal=len(tally.duplicated),
        server_errors=ledger.server_errors + sum(status == 500 for status, _, _ in answers.values()),
        slowest_answer_while_stalled_s=round(max(seconds for _, seconds, _ in answers.values()), 2),
    )
    ledger.close()

    for name, (status, seconds, body) in answers.items():
        assert status == 503, (name, status, body)
        assert httpx.Response(503, content=body).json()["error"]["code"] == "unavailable", (name, body)
        assert seconds <= ANSWER_WITHIN_S, (name, round(seconds, 2))
    assert all(process.popen.poll() is None for process in processes), "a process died with the stall"
    assert tally.lost == [] and tally.duplicated == [], tally
    assert tally.by_outcome == {"connection.completed": 3}, tally.by_outcome
    assert ledger.server_errors == 0
