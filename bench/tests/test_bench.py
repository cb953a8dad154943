"""`python -m bench --quick`: every scenario x system row, sane figures, ours loses nothing, never
trips the upstream block in the burst and stops calling when another client trips it, and no child
process outlives the run, even an interrupted one."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.integration

SCENARIOS = ("overhead", "throughput", "faults", "burst", "burst-shared")
SYSTEMS = ("pipeline", "inline", "naive-celery")


def _children_of(pid: int) -> list[int]:
    listing = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(line) for line in listing.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _bench(*options: str) -> list[str]:
    return [sys.executable, "-m", "bench", "--quick", "--concurrency", "16", *options]


@dataclass(frozen=True)
class QuickBench:
    run: subprocess.CompletedProcess[str]
    document: dict[str, Any]


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory: pytest.TempPathFactory) -> QuickBench:
    """One `bench --quick` of every scenario and system (it takes a minute or two): the tests below read
    its output, each what it is about."""
    results = tmp_path_factory.mktemp("bench") / "bench.json"
    run = subprocess.run(
        _bench("--json", str(results)), cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return QuickBench(run, json.loads(results.read_text()))


# the quick bench's tokens live 2 s: its bounds are timed, so it runs alone (and its figures are ours)
@pytest.mark.alone
def test_quick_bench_reports_every_scenario_and_system(quick_bench: QuickBench) -> None:
    run, document = quick_bench.run, quick_bench.document
    assert "scenario" in run.stdout
    assert "targets:" in run.stdout

    rows = {(row["scenario"], row["system"]): row for row in document["rows"]}
    assert set(rows) == {(scenario, system) for scenario in SCENARIOS for system in SYSTEMS}
    for row in rows.values():
        assert row["flows"] > 0
        ended = row["completed"] + row["expired"] + row["failed"]
        assert ended + row["lost"] == row["flows"], row
        assert row["completed"] > 0, row
        assert 0 < row["callback_p50_ms"] <= row["callback_p99_ms"] < 60_000, row
        assert row["upstream_calls"] >= row["completed"], row

    for scenario in SCENARIOS:
        ours = rows[(scenario, "pipeline")]
        assert ours["lost"] == 0, ours
        assert ours["repeated_endings"] == 0, ours  # exactly one terminal event per flow
        assert ours["callbacks_refused"] == 0, ours
    assert rows[("faults", "pipeline")]["failed"] == 0  # a transient fault never fails a flow
    burst = rows[("burst", "pipeline")]
    assert burst["block_tripped"] is False, burst
    assert burst["rate_limit_429s"] == 0, burst
    assert burst["optimum"], burst
    assert burst["completed"] >= 0.8 * burst["optimum"], burst

    # the inline baseline has no retry: with 30% faults, some of its flows fail
    assert rows[("faults", "inline")]["completed"] < rows[("faults", "inline")]["flows"]
    assert document["generator_floor_ms"]["p50"] > 0


@pytest.mark.alone
def test_with_a_careless_client_on_the_account_ours_stops_calling_at_its_first_429(
    quick_bench: QuickBench,
) -> None:
    run, document = quick_bench.run, quick_bench.document
    assert "the account shared with a careless client" in run.stdout
    assert "optimum" in document["scenarios"]["burst-shared"]
    rows = {row["system"]: row for row in document["rows"] if row["scenario"] == "burst-shared"}
    ours, naive = rows["pipeline"], rows["naive-celery"]
    assert ours["block_tripped"] is True, ours  # the careless client pushed the account over its limit
    assert ours["shared"]["careless_calls"] > 0, ours
    assert ours["shared"]["blocks"] >= 1, ours
    # after its first 429 in a block ours sends nothing: only calls already on their way can follow it,
    # and its budget never has more than a window's worth (10 calls) out at once
    assert ours["shared"]["calls_after_first_429"] < 10, ours
    assert ours["shared"]["calls_after_first_429"] < naive["shared"]["calls_after_first_429"], (ours, naive)
    assert ours["failed"] == 0, ours
    assert ours["lost"] == 0, ours
    assert ours["completed"] > 0, ours
    # a flow the block (or the budget's queue) leaves no time ends expired, never failed
    assert all(reason.startswith("expired:") for reason in ours["reasons"]), ours
    assert 0 < ours["optimum"] <= ours["flows"], ours


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# a parent that ignores SIGINT (as a test runner's worker may) hands that on across exec: Ctrl-C still
# stops the bench, by a handler of its own
@pytest.mark.parametrize("parent", ["default", "ignoring SIGINT"])
def test_interrupted_bench_stops_every_child_process(tmp_path: Path, parent: str) -> None:
    stderr = tmp_path / "stderr"
    with stderr.open("w") as sink:
        bench = subprocess.Popen(
            _bench("--scenario", "overhead"),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            preexec_fn=_ignore_sigint if parent == "ignoring SIGINT" else None,
        )
    try:
        deadline = time.monotonic() + 90
        while "pipeline: overhead" not in stderr.read_text() and time.monotonic() < deadline:
            assert bench.poll() is None, stderr.read_text()
            time.sleep(0.2)
        children = _children_of(bench.pid)
        assert len(children) >= 4, children  # redis, sandbox, shim, worker
        bench.send_signal(signal.SIGINT)
        assert bench.wait(60) == 130
    finally:
        if bench.poll() is None:
            bench.kill()
    assert [pid for pid in children if _alive(pid)] == []
    assert "every process stopped" in stderr.read_text()


def test_bench_measures_only_the_systems_asked_for(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    run = subprocess.run(
        _bench("--system", "pipeline", "--scenario", "overhead", "--flows", "5", "--json", str(results)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    document = json.loads(results.read_text())
    assert [(row["scenario"], row["system"]) for row in document["rows"]] == [("overhead", "pipeline")]
    assert document["options"]["systems"] == ["pipeline"]
    assert "naive-celery: starting" not in run.stderr
    assert "inline: starting" not in run.stderr
    refused = subprocess.run(
        _bench("--system", "celery"), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "invalid choice" in refused.stderr


def test_ours_can_wait_for_a_replica_of_the_bench_s_redis(tmp_path: Path) -> None:
    """What REDIS_WAIT_REPLICAS costs is measured with `--redis-replicas 1 --wait-replicas 1`: the bench's
    Redis gets a replica (its CPU counted with Redis's) and ours waits for it at every acknowledged step."""
    results = tmp_path / "bench.json"
    options = ("--system", "pipeline", "--scenario", "overhead", "--flows", "5", "--json", str(results))
    run = subprocess.run(
        _bench(*options, "--redis-replicas", "1", "--wait-replicas", "1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    document = json.loads(results.read_text())
    (row,) = document["rows"]
    assert (row["flows"], row["completed"]) == (5, 5), row
    assert (document["options"]["redis_replicas"], document["options"]["wait_replicas"]) == (1, 1)
    assert "redis-replica0" in run.stdout  # its CPU is in the table
    refused = subprocess.run(
        _bench("--wait-replicas", "1"), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "--wait-replicas must be between 0 and --redis-replicas" in refused.stderr


def test_ours_can_run_with_settings_of_its_own_and_export_traces_to_the_benchs_sink(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    options = ["--pipeline-env", "OTEL_BSP_SCHEDULE_DELAY=200", "--traces", "--json", str(results)]
    run = subprocess.run(
        _bench("--system", "pipeline", "--scenario", "overhead", "--flows", "5", *options),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    document = json.loads(results.read_text())
    assert document["rows"][0]["completed"] == 5
    assert document["options"]["pipeline_env"] == ["OTEL_BSP_SCHEDULE_DELAY"]
    assert document["options"]["traces"] is True
    received = re.search(r"pipeline: traces: \{'exports': (\d+), 'spans': (\d+)", run.stderr)
    assert received, run.stderr[-3000:]
    assert int(received[2]) >= 5 * 4  # each flow: Step 1's request and call, its callback, task and call
    refused = subprocess.run(
        _bench("--pipeline-env", "NO_EQUALS_SIGN"), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "KEY=VALUE" in refused.stderr


def test_a_rate_needs_enough_completions_to_mean_something() -> None:
    from bench.scenarios import MIN_RATED, completion_rate

    assert math.isnan(completion_rate([5.0] * (MIN_RATED - 1)))
    steady = [index / 100 for index in range(200)]  # 100 a second
    assert completion_rate(steady) == pytest.approx(100.0)


def test_the_median_over_every_flow_counts_a_flow_that_did_not_complete_as_never_completing() -> None:
    from bench.report import every_flow_p50, percentile

    assert every_flow_p50([3.0, 1.0, 2.0], 3) == percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert every_flow_p50([1.0, 2.0, 3.0], 4) == 2.0  # one flow failed: the median moves up
    assert every_flow_p50([1.0, 2.0, 3.0], 6) == 3.0
    assert math.isinf(every_flow_p50([1.0, 2.0, 3.0], 7))  # fewer than half completed


def test_the_webhooks_scenario_delivers_every_event_to_both_endpoints(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    run = subprocess.run(
        _bench("--scenario", "webhooks", "--flows", "8", "--json", str(results)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "naive-celery: webhooks skipped" in run.stderr  # ours only: the baselines have no webhooks
    (row,) = json.loads(results.read_text())["rows"]
    assert (row["scenario"], row["system"], row["lost"]) == ("webhooks", "pipeline", 0)
    figures = row["webhooks"]
    assert figures["events"] == 3 * 8
    assert figures["delivered_steady"] == figures["delivered_flaky"] == figures["events"], figures
    assert figures["refused_by_flaky"] > 0
    assert 0 < figures["lag_p50_ms"] <= figures["lag_p99_ms"], figures
    assert "lag p50" in run.stdout
    # the endpoint limited to 20 a second got every connection event and never more than that
    assert figures["delivered_limited"] == figures["limited_events"] == 8, figures
    assert 0 < figures["limited_busiest_second"] <= 20, figures
    # the dead endpoint was disabled, the steady one told once; the lag without it was measured too
    assert figures["dead_disabled"] is True, figures
    assert figures["disabled_notices"] == 1, figures
    assert figures["lag_p50_without_dead_ms"] > 0, figures
    # ended deliveries go once their retention passed
    assert figures["delivery_memory_after_retention_bytes"] < figures["delivery_memory_bytes"], figures
    assert "dead endpoint disabled: yes" in run.stdout


def test_ctrl_c_while_a_reader_is_being_stopped_is_not_swallowed() -> None:
    """asyncio.run turns Ctrl-C into a cancellation of the main task; one that lands while the load's
    reader is being stopped must go on (the bench then exits 130), not be taken for the reader's own."""
    import asyncio

    from bench.load import ended_quietly

    async def main() -> str:
        reader = asyncio.create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        reader.cancel()
        await ended_quietly(reader)  # the reader's own cancellation: nothing to say
        reader = asyncio.create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        main_task = asyncio.current_task()
        assert main_task is not None
        reader.cancel()
        main_task.cancel()  # Ctrl-C, at that moment
        await ended_quietly(reader)
        return "interrupt swallowed"

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
