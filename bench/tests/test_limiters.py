"""`python -m bench.limiters`: our budget against the `limits` library, on a private redis-server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.limiters import Call, optimum, worst_window
from tests.support.processes import ROOT

pytestmark = pytest.mark.integration


@pytest.mark.alone  # flows' deadlines and 200 ms calls in a 10/second budget, timed
def test_ours_serves_the_optimum_and_never_lets_a_window_exceed_the_limit(tmp_path: Path) -> None:
    results = tmp_path / "limiters.json"
    command = [sys.executable, "-m", "bench.limiters", "--flows", "30", "--call-ms", "200"]
    run = subprocess.run(
        [*command, "--json", str(results)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {row["limiter"]: row for row in json.loads(results.read_text())["results"]}
    assert set(rows) == {"limits", "ours"}
    assert "worst window" in run.stdout
    ours = rows["ours"]
    # the optimum orders every flow by deadline; a burst's first slots go to whichever flows reach
    # Redis first (no limiter can take back a call it granted), so the one or two flows whose
    # deadline only the first slots could meet may miss them
    assert ours["flows"] == ours["optimum"] == 30, ours
    assert ours["completed"] >= 28, ours
    assert ours["worst_window"] <= ours["limit"] == 10, ours
    assert ours["within_limit"], ours


def test_the_worst_window_counts_every_call_a_window_could_see() -> None:
    # two calls of 0.3 s a period apart (counted by start, as a window of 1 s allows) can both reach
    # Oktopost inside one window; two that leave a period between the first's end and the second's
    # start cannot
    assert worst_window([Call(0.0, 0.3, 9), Call(1.0, 1.3, 9)]) == 2
    assert worst_window([Call(0.0, 0.3, 9), Call(1.31, 1.61, 9)]) == 1


def test_the_optimum_serves_earliest_deadlines_first_a_batch_per_period_and_call() -> None:
    # 1 call a window, calls of 0.5 s: calls can begin at 0, 1.5, 3.0 ...
    assert optimum([0.4, 0.6, 2.1, 2.2], start=0.0, rate=1, call_seconds=0.5) == 2  # 0.6 and 2.1 (or 2.2)
    assert optimum([9.0] * 5, start=0.0, rate=2, call_seconds=0.5) == 5
