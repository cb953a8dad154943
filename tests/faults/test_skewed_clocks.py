"""A worker whose clock runs 4 s fast and a shim whose clock runs 5 s slow (libfaketime), as on machines
whose clocks disagree: the pipeline reads Redis's clock only, so nothing changes.

The token lives 12 s, so a worker that believed its own clock would expire flows 9 s early; the upstream
budget admits one call a second, so every Step 1 waits about a second for its slot and must be admitted,
not refused; a flow never called back expires within a second of its deadline as Redis sees it; every
event is stamped with Redis's time.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fault_report import FaultReport
from tests.support.ledger import NETWORKS, Ledger, TrackedFlow, epoch, stop_pipeline_quickly
from tests.support.processes import free_port, start_cli, wait_for_http
from tests.support.stack import Pipeline, RedisServer, Sandbox, pipeline_env, start_sandbox

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
SLEEP_FIX = Path(__file__).parent / "faketime_site"
WORKER_AHEAD_S = 4
SHIM_BEHIND_S = 5
TOKEN_TTL = 12
FLOW_TTL = 10
RATE_LIMIT = "1/second"
FLOWS = 4  # called back and completed; one more is never called back
ON_TIME_S = 1.0  # "within about a second": the sweeper's tick and a busy machine's scheduling
STAMP_S = 1.0  # an event's `at` against the time Redis wrote it; a skewed clock is 4 or 5 s off


def skewed(seconds: int) -> dict[str, str]:
    """The environment that runs a child with its wall clock `seconds` off; its monotonic clock is true.

    SLEEP_FIX makes the child's time.sleep one that works under libfaketime (see its sitecustomize).
    """
    return {
        "LD_PRELOAD": str(FAKETIME),
        "FAKETIME": f"{seconds:+d}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "PYTHONPATH": str(SLEEP_FIX),
    }


def clock_offset(env: dict[str, str]) -> float:
    """How far `date` under `env` is from our clock, in seconds."""
    before = time.time()
    shown = float(subprocess.run(["date", "+%s.%N"], env=env, capture_output=True, check=True).stdout)
    return shown - (before + time.time()) / 2


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer) -> Iterator[tuple[Pipeline, Sandbox]]:
    # never skipped: scripts/test installs libfaketime when it is missing
    assert FAKETIME.exists(), f"libfaketime is not installed ({FAKETIME}): apt-get install faketime"
    for seconds in (WORKER_AHEAD_S, -SHIM_BEHIND_S):
        assert abs(clock_offset(skewed(seconds)) - seconds) < 0.5, "libfaketime does not skew the clock"
    with contextlib.ExitStack() as started:
        sandbox = start_sandbox()
        started.callback(sandbox.process.stop)
        port = free_port()
        env = pipeline_env(
            redis_server.url,
            sandbox.url,
            port,
            token_ttl_seconds=TOKEN_TTL,
            flow_ttl_seconds=FLOW_TTL,
            oktopost_rate_limit=RATE_LIMIT,
            oktopost_timeout_seconds=3,
        )
        shim = start_cli(["shim", "--port", str(port)], env={**env, **skewed(-SHIM_BEHIND_S)}, name="shim")
        pipeline = Pipeline(f"http://127.0.0.1:{port}", redis_server.url, env["CHANNEL_PREFIX"], env, shim)
        started.callback(stop_pipeline_quickly, pipeline)
        worker_args = ["worker", "--concurrency", "8", "--hostname", f"skewed-{uuid.uuid4().hex[:6]}@%h"]
        worker_env = {**env, **skewed(WORKER_AHEAD_S)}
        pipeline.workers.append(start_cli(worker_args, env=worker_env, name="worker"))
        wait_for_http(f"{pipeline.shim_url}/healthz", shim)
        yield pipeline, sandbox


def test_flows_keep_redis_time_when_worker_and_shim_clocks_are_off(
    stack: tuple[Pipeline, Sandbox], fault_report: FaultReport
) -> None:
    pipeline, _ = stack
    ledger = Ledger(pipeline)
    try:
        step1_seconds, created_at = [], []
        for i in range(FLOWS + 1):  # one after another: each waits for the budget's next slot
            started = time.monotonic()
            ledger.start(NETWORKS[i % len(NETWORKS)])
            step1_seconds.append(time.monotonic() - started)
            created_at.append(_redis_time(ledger))
        *flows, never_called = ledger.flows
        for flow in flows:
            ledger.callback(flow)
        events = ledger.outcomes(ledger.flows, timeout=FLOW_TTL + 5)
        stamped = {flow.flow_id: _stamped(ledger, flow.flow_id) for flow in ledger.flows}
        tally = ledger.tally(events)

        token_life = [_token_life(events[flow.flow_id]) for flow in flows]
        time_left = [_time_left_at_end(events[flow.flow_id]) for flow in flows]
        expiry_late = stamped[never_called.flow_id][-1][0] - never_called.expires_at
        stamps_off = [abs(epoch(event["at"]) - written) for s in stamped.values() for written, event in s]
        deadline_off = [
            abs(f.expires_at - FLOW_TTL - at) for f, at in zip(ledger.flows, created_at, strict=True)
        ]
        fault_report.record(
            "9 skewed clocks",
            **tally.figures(),
            faults_injected=2,  # two clocks off
            server_errors=ledger.server_errors,
            wrong_outcome=_wrong_outcomes(events, flows, never_called.flow_id),
            step1_seconds=[round(s, 2) for s in step1_seconds],
            least_token_time_left_at_completion_s=round(min(time_left), 2),
            expiry_after_deadline_s=round(expiry_late, 2),
            event_stamp_off_redis_time_max_s=round(max(stamps_off), 3),
        )
    finally:
        ledger.close()

    assert tally.lost == [], tally
    assert tally.duplicated == [], tally
    assert tally.by_outcome == {"connection.completed": FLOWS, "authorization.expired:callback": 1}, (
        tally.by_outcome
    )
    assert ledger.server_errors == 0, ledger.error_bodies  # admission waited for a slot: no 503
    assert max(step1_seconds[1:]) >= 0.5, step1_seconds  # ... and there was a slot to wait for
    assert max(deadline_off) < ON_TIME_S, deadline_off  # a flow's deadline is set on Redis's clock
    assert all(abs(life - TOKEN_TTL) < ON_TIME_S for life in token_life), token_life
    assert min(time_left) > 0, time_left
    assert -0.1 <= expiry_late <= ON_TIME_S, expiry_late
    assert max(stamps_off) < STAMP_S, stamps_off


def _redis_time(ledger: Ledger) -> float:
    seconds, microseconds = ledger.redis.time()
    return float(seconds) + microseconds / 1_000_000


def _stamped(ledger: Ledger, flow_id: str) -> list[tuple[float, dict[str, Any]]]:
    """The flow's events, each with the Redis time it was written at (its stream entry's id)."""
    stamped = []
    for entry_id, fields in ledger.redis.xrange(ledger.names.flow_stream(flow_id)):
        milliseconds = int(entry_id.decode().split("-")[0])
        stamped.append((milliseconds / 1000, json.loads(fields[b"event"])))
    return stamped


def _token_life(events: list[dict[str, Any]]) -> float:
    """How long the flow's token was given at its callback, by the callback's own time."""
    claimed = next(e for e in events if e["type"] == "callback.received")
    return epoch(claimed["data"]["token_expires_at"]) - epoch(claimed["at"])


def _time_left_at_end(events: list[dict[str, Any]]) -> float:
    claimed = next(e for e in events if e["type"] == "callback.received")
    return epoch(claimed["data"]["token_expires_at"]) - epoch(events[-1]["at"])


def _wrong_outcomes(events: dict[str, list[dict[str, Any]]], flows: list[TrackedFlow], expired: str) -> int:
    expected = {flow.flow_id: "connection.completed" for flow in flows} | {expired: "authorization.expired"}
    return sum(not events[f] or events[f][-1]["type"] != outcome for f, outcome in expected.items())
