"""Secrets when Oktopost refuses the credentials: the path where a key is most likely to be echoed back.

A shim whose OKTOPOST_API_KEY is wrong answers Step 1 with 502 `unauthorized`; a worker whose key is
wrong (its shim's is right) ends each flow `authorization.failed` / `unauthorized`. Everything runs at
LOG_LEVEL=DEBUG. Neither the right nor the wrong key, nor either Basic-auth value, nor an okt token
(whole or either half) appears in a log line of the shim, worker or sandbox, an error body or an event.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from tests.support.fault_report import FaultReport
from tests.support.ledger import NETWORKS, Ledger
from tests.support.stack import Pipeline, RedisServer, Sandbox, start_pipeline, start_sandbox

pytestmark = [pytest.mark.faults, pytest.mark.integration]

ACCOUNT = "acct-" + secrets.token_hex(4)
RIGHT_KEY = "okt-key-" + secrets.token_hex(16)
WRONG_KEY = "okt-bad-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer) -> Iterator[tuple[Sandbox, Pipeline, Pipeline]]:
    with contextlib.ExitStack() as started:
        sandbox = start_sandbox(
            "--access-log", env={"OKTOPOST_ACCOUNT_ID": ACCOUNT, "OKTOPOST_API_KEY": RIGHT_KEY}
        )
        started.callback(sandbox.process.stop)
        account = {"oktopost_account_id": ACCOUNT, "oktopost_timeout_seconds": 1}
        wrong_shim = start_pipeline(
            redis_server.url, sandbox.url, workers=0, oktopost_api_key=WRONG_KEY, **account
        )
        started.callback(wrong_shim.stop)
        wrong_worker = start_pipeline(
            redis_server.url, sandbox.url, workers=0, oktopost_api_key=RIGHT_KEY, **account
        )
        started.callback(wrong_worker.stop)
        wrong_worker.env["OKTOPOST_API_KEY"] = WRONG_KEY
        wrong_worker.start_worker(concurrency=4)
        yield sandbox, wrong_shim, wrong_worker


def test_refused_credentials_leave_no_key_or_token_behind(
    stack: tuple[Sandbox, Pipeline, Pipeline], fault_report: FaultReport
) -> None:
    sandbox, wrong_shim, wrong_worker = stack
    answer = httpx.post(  # the one 5xx asked for: Oktopost refuses the shim's key
        f"{wrong_shim.shim_url}/v1/authorizations", json={"network": "LinkedIn"}, headers=wrong_shim.headers
    )
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"] == "unauthorized", answer.text

    ledger = Ledger(wrong_worker)
    flows = [ledger.start(network) for network in NETWORKS[:3]]
    for flow in flows:
        ledger.callback(flow)
    events = ledger.outcomes(flows, timeout=20, settle=0.3)
    tally = ledger.tally(events)

    values = {
        "right key": RIGHT_KEY,
        "wrong key": WRONG_KEY,
        "right Basic value": base64.b64encode(f"{ACCOUNT}:{RIGHT_KEY}".encode()).decode(),
        "wrong Basic value": base64.b64encode(f"{ACCOUNT}:{WRONG_KEY}".encode()).decode(),
    }
    for i, flow in enumerate(flows):  # a token cut short is still a leak: each half on its own
        head, _, tail = flow.token.partition(".")
        values.update(
            {f"okt token {i}": flow.token, f"okt token {i} head": head, f"okt token {i} tail": tail}
        )
    places = {
        f"{name} log": process.output
        for name, process in [
            ("refused shim", wrong_shim.shim),
            ("shim", wrong_worker.shim),
            ("refused worker", wrong_worker.workers[0]),
            ("sandbox", sandbox.process),
        ]
    }
    places["error bodies"] = "\n".join([answer.text, *ledger.error_bodies])
    places["events"] = json.dumps(events)
    leaks = [
        f"{what} in {where}"
        for what, value in values.items()
        for form in {value, quote(value, safe="")}
        for where, text in places.items()
        if form in text
    ]
    fault_report.record(
        "6 secrets",
        **tally.figures(),
        server_errors=ledger.server_errors,
        refused_credentials_leaks=len(leaks),
    )
    ledger.close()

    assert leaks == [], leaks
    assert tally.lost == [], tally
    assert tally.duplicated == [], tally
    assert tally.by_outcome == {"authorization.failed:unauthorized": len(flows)}, tally.by_outcome
    assert "401" in places["refused worker log"]
    assert "DEBUG" in places["refused worker log"]
