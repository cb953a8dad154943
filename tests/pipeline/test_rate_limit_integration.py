"""A burst of callbacks against a sandbox that blocks on excess, as Oktopost does: never tripped."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.flows import callback, consent, events_of
from tests.support.stack import RedisServer, start_pipeline, start_sandbox

pytestmark = pytest.mark.integration


@pytest.mark.alone  # 3 s tokens: completions at the limit are timed
def test_burst_is_served_at_the_limit_without_tripping_the_block(redis_server: RedisServer) -> None:
    with contextlib.ExitStack() as started:
        sandbox = start_sandbox("--rate-limit", "10/second", "--block-seconds", "120")
        started.callback(sandbox.process.stop)
        pipeline = start_pipeline(
            redis_server.url, sandbox.url, workers=0, oktopost_rate_limit="10/second", token_ttl_seconds=3
        )
        started.callback(pipeline.stop)
        pipeline.start_worker(concurrency=16)
        flows: list[dict[str, Any]] = []
        while len(flows) < 40:  # Step 1 shares the budget: admission control answers 503 when it is taken
            answer = httpx.post(
                f"{pipeline.shim_url}/v1/authorizations",
                json={"network": "LinkedIn", "ui": "redirect"},
                headers=pipeline.headers,
                timeout=15,
            )
            if answer.status_code == 503:
                assert answer.json()["error"]["code"] == "upstream_budget_exhausted"
                time.sleep(float(answer.headers["Retry-After"]))
                continue
            assert answer.status_code == 201, answer.text
            flows.append(answer.json())
        urls = [consent(flow["redirect_url"]) for flow in flows]
        time.sleep(1.1)  # let Step 1's calls leave the window
        with ThreadPoolExecutor(max_workers=40) as pool:
            assert {r.status_code for r in pool.map(callback, urls)} == {200}  # no return_url: a status page
        with ThreadPoolExecutor(max_workers=40) as pool:
            endings = list(pool.map(lambda f: events_of(pipeline, f["flow_id"], timeout=20), flows))
        terminal = [events[-1]["type"] for events in endings]
        completed = terminal.count("connection.completed")
        # optimum: min(flows, rate x token TTL) = min(40, 10 x 3) = 30
        assert completed >= 27, terminal
        assert set(terminal) <= {"connection.completed", "authorization.expired"}
        assert all(
            [e["type"] for e in events].count(events[-1]["type"]) == 1 for events in endings
        )  # one terminal event each
        stats = sandbox.stats()
        assert stats["ever_blocked"] is False
        assert stats["responses_429"]["rate_limit"] == 0
