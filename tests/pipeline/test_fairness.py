"""No starving, against real processes: one tenant's burst waits for its own account's budget in Redis,
parked, and holds no worker thread, so another tenant's flows on another account go through at once.

Two tenants on two sandbox accounts, each limited to 5 calls a second by the sandbox (which blocks an
account that goes past it), one worker process with two threads. Tenant A's burst: every flow of it is
called back at once, far more than the threads and than its account can serve before the tokens die.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.flows import callback, consent, events_of
from tests.support.stack import RedisServer, start_pipeline, start_sandbox
from worker.keys import RedisNames

pytestmark = [pytest.mark.integration, pytest.mark.alone]  # B's times are held to an idle system's

A_KEY, B_KEY = "tenant-a-caller-key-0123456789", "tenant-b-caller-key-0123456789"
A_ACCOUNT, B_ACCOUNT = "account-a", "account-b"
BURST = 48  # A's flows, called back at once
TOKEN_TTL = 6  # A's account serves 5 verifications a second: about 35 of them in a token's life
RATE = 5


def tenants_toml(sandbox_url: str) -> str:
    def tenant(name: str, key: str, account: str) -> str:
        return (
            f"[tenants.{name}]\n"
            f'api_keys = ["{key}"]\n'
            'allowed_return_urls = ["https://app.example"]\n'
            f'oktopost = {{ account_id = "{account}", api_key = "{account}-api-key", '
            f'base_url = "{sandbox_url}", rate_limit = "{RATE}/second" }}\n'
        )

    return tenant("a", A_KEY, A_ACCOUNT) + tenant("b", B_KEY, B_ACCOUNT)


def start_flows(shim_url: str, key: str, count: int) -> list[dict[str, Any]]:
    """`count` flows through Step 1, which shares the account's budget: a 503 says when to ask again."""
    flows: list[dict[str, Any]] = []
    while len(flows) < count:
        answer = httpx.post(
            f"{shim_url}/v1/authorizations",
            json={"network": "LinkedIn", "ui": "redirect"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=15,
        )
        if answer.status_code == 503:
            assert answer.json()["error"]["code"] == "upstream_budget_exhausted", answer.text
            time.sleep(min(1.0, float(answer.headers["Retry-After"])))
            continue
        assert answer.status_code == 201, answer.text
        flows.append(answer.json())
    return flows


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def callback_to_terminal(events: list[dict[str, Any]]) -> float:
    called = next(e for e in events if e["type"] == "callback.received")
    return seconds(events[-1]["at"]) - seconds(called["at"])


def test_a_burst_on_one_account_parks_and_never_delays_another_accounts_flows(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    accounts = [f"{A_ACCOUNT}:{A_ACCOUNT}-api-key", f"{B_ACCOUNT}:{B_ACCOUNT}-api-key"]
    sandbox = start_sandbox(
        "--rate-limit", f"{RATE}/second", "--block-seconds", "120", *(f"--account={a}" for a in accounts)
    )
    pipeline = None
    try:
        tenants = tmp_path / "tenants.toml"
        tenants.write_text(tenants_toml(sandbox.url))
        pipeline = start_pipeline(
            redis_server.url,
            sandbox.url,
            workers=0,
            tenants_file=str(tenants),
            token_ttl_seconds=TOKEN_TTL,
            oktopost_rate_limit=f"{RATE}/second",
        )
        pipeline.start_worker(concurrency=2)
        running = pipeline
        parked_a = RedisNames(pipeline.prefix).account(A_ACCOUNT).parked_flows
        redis: Any = pipeline.redis()  # redis-py annotates commands as sync-or-async; this is sync

        def run_b(count: int) -> list[float]:
            """B's flows one after the other, as its users come back; each one's callback to terminal.
            Their Step 1s come first, and leave B's window before the first callback."""
            urls = [consent(flow["redirect_url"]) for flow in start_flows(running.shim_url, B_KEY, count)]
            time.sleep(1.1)
            times = []
            for url in urls:
                assert callback(url).status_code == 200
                flow_id = url.split("/v1/callback/")[1].split("?")[0]
                events = events_of(running, flow_id, timeout=10)
                assert events[-1]["type"] == "connection.completed", events[-1]
                times.append(callback_to_terminal(events))
            return times

        idle = run_b(4)[1:]  # the same flows of B on an idle system (the first warms connections up)

        burst = start_flows(pipeline.shim_url, A_KEY, BURST)
        urls = [consent(flow["redirect_url"]) for flow in burst]
        time.sleep(1.1)  # Step 1's calls leave A's window
        with ThreadPoolExecutor(max_workers=16) as pool:
            called = pool.map(callback, urls)
            assert {answer.status_code for answer in called} == {200}
        deadline = time.monotonic() + 5
        while redis.zcard(parked_a) < 20:  # ten times the worker's threads wait in Redis, not in a thread
            assert time.monotonic() < deadline, redis.zcard(parked_a)
            time.sleep(0.05)
        busy = run_b(3)  # while A's burst waits for its account
        assert redis.zcard(parked_a) > 0  # A still had flows waiting when B's were done

        with ThreadPoolExecutor(max_workers=16) as pool:
            endings = list(pool.map(lambda f: events_of(running, f["flow_id"], timeout=20), burst))
        terminal = [events[-1]["type"] for events in endings]
        for events in endings:  # one terminal event each: none lost, none doubled
            assert [e["type"] for e in events].count(events[-1]["type"]) == 1
        assert set(terminal) == {"connection.completed", "authorization.expired"}, terminal
        completed = [events for events in endings if events[-1]["type"] == "connection.completed"]
        # A's optimum: its account's rate over a token's life (and the first window's), less some slack
        assert len(completed) >= RATE * TOKEN_TTL, terminal
        # earliest deadline first: no flow completes a window or more before one called back earlier
        # (within a window, tasks that run at once take its slots in whichever order they ask)
        by_deadline = sorted(completed, key=lambda events: seconds(events[1]["at"]))
        done = [seconds(events[-1]["at"]) for events in by_deadline]
        assert all(later >= max(done[: index + 1]) - 1.2 for index, later in enumerate(done)), done

        assert max(busy) <= max(0.25, 3 * max(idle)), (idle, busy)  # about the time of an idle system
        stats = sandbox.stats()
        for account in (A_ACCOUNT, B_ACCOUNT):
            assert stats["accounts"][account]["blocked"] is False, stats
            assert stats["accounts"][account]["throttled"] == 0, stats
        connected = {c["Account"] for c in sandbox.connections()}
        assert connected == {A_ACCOUNT, B_ACCOUNT}
        print(f"B idle {idle}, B beside A's burst {busy}, A completed {len(completed)} of {BURST}")
    finally:
        if pipeline is not None:
            pipeline.stop()
        sandbox.process.stop()
