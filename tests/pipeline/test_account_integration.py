"""The Oktopost account protected as a whole, against real processes: a sandbox whose limit is lower than
ours (another client spends the rest of the account), a 429 without Retry-After, a small daily limit."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.flows import callback, consent, events_of, start_flow
from tests.support.ledger import start_stack
from tests.support.stack import Pipeline, RedisServer, Sandbox, start_pipeline, start_sandbox
from worker.keys import RedisNames
from worker.upstream.account import seconds_to_midnight

pytestmark = pytest.mark.integration


def _sandbox_calls(sandbox: Sandbox) -> int:
    """`/v2/` calls the sandbox answered (its stats call them `calls`, or `v2_calls` in older builds)."""
    stats: dict[str, Any] = sandbox.stats()
    return int(stats.get("calls", stats.get("v2_calls", 0)))


def _paused_until(pipeline: Pipeline, timeout: float) -> float:
    """The end of the account's pause as the pipeline keeps it in Redis, once there is one."""
    key = RedisNames(pipeline.prefix).account(pipeline.env["OKTOPOST_ACCOUNT_ID"]).account_pause
    client: Any = pipeline.redis()  # redis-py annotates commands as sync-or-async; this is sync
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        ends = client.get(key)
        if ends is not None:
            return float(ends)
        time.sleep(0.01)
    raise AssertionError(f"no pause within {timeout}s")


def _redis_now(pipeline: Pipeline) -> float:
    client: Any = pipeline.redis()
    seconds, microseconds = client.time()
    return int(seconds) + int(microseconds) / 1_000_000


@pytest.mark.alone  # a 3 s block and 2 s windows, read while they last
def test_after_a_429_no_call_is_made_until_the_pause_ends_and_flows_complete_after_it(
    redis_server: RedisServer,
) -> None:
    # 5 calls in any 2 s, then blocked 3 s: 4 Step 1s and 4 verifications cannot all pass at once
    with contextlib.ExitStack() as started:
        sandbox = start_sandbox("--rate-limit", "5/2seconds", "--block-seconds", "3")
        started.callback(sandbox.process.stop)
        pipeline = start_pipeline(redis_server.url, sandbox.url, workers=1, token_ttl_seconds=60)
        started.callback(pipeline.stop)
        flows = [start_flow(pipeline, return_url=None, ui="redirect") for _ in range(4)]
        urls = [consent(flow["redirect_url"]) for flow in flows]
        with ThreadPoolExecutor(max_workers=4) as pool:
            assert {answer.status_code for answer in pool.map(callback, urls)} == {200}
        paused_until = _paused_until(pipeline, timeout=15)
        time.sleep(0.3)  # calls already on the wire when the first 429 came back land meanwhile
        during = _sandbox_calls(sandbox)
        time.sleep(max(0.0, paused_until - _redis_now(pipeline) - 0.2))
        assert _sandbox_calls(sandbox) == during  # not one call while the account was paused
        with ThreadPoolExecutor(max_workers=4) as pool:
            endings = list(pool.map(lambda flow: events_of(pipeline, flow["flow_id"], timeout=30), flows))
        assert [events[-1]["type"] for events in endings] == ["connection.completed"] * 4


@pytest.mark.alone  # the pause read to the second
def test_a_429_without_retry_after_pauses_the_account_for_the_block_seconds(
    redis_server: RedisServer,
) -> None:
    with contextlib.ExitStack() as started:
        # a new flow is refused at once while the account is paused, however soon the pause ends
        pipeline, sandbox = start_stack(started, redis_server.url, workers=0, oktopost_block_seconds=5)
        sandbox.set_faults(throttle_rate=1.0, retry_after_s=None)  # 429 without Retry-After
        answer = httpx.post(
            f"{pipeline.shim_url}/v1/authorizations",
            json={"network": "LinkedIn"},
            headers=pipeline.headers,
            timeout=15,
        )
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "upstream_blocked"
        assert answer.headers["retry-after"] in ("4", "5")
        assert 4.0 < _paused_until(pipeline, timeout=1) - _redis_now(pipeline) <= 5.0
        assert _sandbox_calls(sandbox) == 1
        sandbox.set_faults(throttle_rate=0.0)
        time.sleep(5.1)
        assert start_flow(pipeline)["flow_id"]  # resumed by itself


def test_with_a_small_daily_limit_admitted_flows_complete_and_the_next_waits_for_midnight_utc(
    redis_server: RedisServer, sandbox: Sandbox
) -> None:
    pipeline = start_pipeline(redis_server.url, sandbox.url, workers=1, oktopost_daily_limit=5)
    try:
        # a profile needs 2 calls
        admitted = [start_flow(pipeline, return_url=None, ui="redirect") for _ in range(2)]
        refused = httpx.post(
            f"{pipeline.shim_url}/v1/authorizations",
            json={"network": "LinkedIn"},
            headers=pipeline.headers,
            timeout=15,
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "daily_limit_reached"
        assert abs(int(refused.headers["retry-after"]) - seconds_to_midnight(time.time())) <= 2
        for flow in admitted:
            assert callback(consent(flow["redirect_url"])).status_code == 200
        endings = [events_of(pipeline, flow["flow_id"]) for flow in admitted]
        assert [events[-1]["type"] for events in endings] == ["connection.completed"] * 2
        metrics = httpx.get(f"{pipeline.shim_url}/metrics").text
        assert 'okc_account_daily_calls_remaining{account="demo-account"} 1.0' in metrics
    finally:
        pipeline.stop()
