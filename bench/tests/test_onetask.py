"""`python -m bench.onetask`: what our task code costs a flow, on a private redis-server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.integration


def test_every_flow_completes_and_its_costs_are_reported(tmp_path: Path) -> None:
    results = tmp_path / "onetask.json"
    command = [sys.executable, "-m", "bench.onetask", "--flows", "50", "--json", str(results)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    per_flow = json.loads(results.read_text())
    assert per_flow["flows"] == 50
    # the take with its budget ask and the terminal transition: two scripts, and what they run inside
    assert 2 <= per_flow["redis_commands"] < 80, per_flow
    assert per_flow["process_cpu_us"] > 0
    assert per_flow["wall_us"] > 0
    assert "per flow" in run.stdout
