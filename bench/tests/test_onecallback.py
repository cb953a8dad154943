"""`python -m bench.onecallback`: what a callback's claim costs the shim, each way (private redis-server)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.integration


def test_every_callback_claims_its_flow_and_both_ways_are_reported(tmp_path: Path) -> None:
    results = tmp_path / "onecallback.json"
    command = [sys.executable, "-m", "bench.onecallback", "--callbacks", "50", "--json", str(results)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    ways = json.loads(results.read_text())
    one_call, two_calls = ways["read_and_claim_in_one_call"], ways["read_then_claim"]
    assert one_call["flows"] == two_calls["flows"] == 50
    # the read moved into the claim's script (one command sent fewer, one more run inside it), which
    # hands the flow it read to its transition: that transition's own read of the flow is the one fewer
    assert two_calls["redis_commands"] - one_call["redis_commands"] == pytest.approx(1.0, abs=0.05)
    assert one_call["redis_commands"] > 2
    assert one_call["process_cpu_us"] > 0
    assert "read and claim in one call" in run.stdout
