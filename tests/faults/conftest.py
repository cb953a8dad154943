"""Fixtures of the fault suite: `fault_report`, the figures every part adds up (tests/support/fault_report.py:
printed at the end of the run and written as JSON); `stack`, a module's sandbox, shim and worker.

The JSON goes to `$OKC_FAULT_REPORT` when set, else to `fault-report.json` in pytest's temporary
directory; the summary at the end of the run names the file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.support.fault_report import REPORT, FaultReport
from tests.support.ledger import FaultStack, stop_pipeline_quickly
from tests.support.stack import Pipeline, RedisServer, Sandbox, start_pipeline, start_sandbox


@pytest.fixture(scope="session")
def fault_report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> FaultReport:
    home = tmp_path_factory.getbasetemp()
    if hasattr(request.config, "workerinput"):
        home = home.parent  # a worker of a parallel run: the report goes to the controller's directory
    REPORT.default_path = home / "fault-report.json"
    return REPORT


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[tuple[Pipeline, Sandbox]]:
    """The module's sandbox and pipeline, as its `STACK` (a FaultStack) says; stopped with the module,
    and when a later one fails to start."""
    spec: FaultStack = request.module.STACK
    with contextlib.ExitStack() as started:
        sandbox = start_sandbox(*spec.sandbox_flags, env=spec.sandbox_env)
        started.callback(sandbox.process.stop)
        pipeline = start_pipeline(redis_server.url, sandbox.url, workers=0, **spec.settings)
        started.callback(stop_pipeline_quickly, pipeline)
        if spec.concurrency:
            pipeline.start_worker(concurrency=spec.concurrency)
        yield pipeline, sandbox
