"""Fixtures of the fault suite: `fault_report`, the figures every part adds up (see tests/faults/report.py:
printed at the end of the run and written as JSON).

The JSON goes to `$OKC_FAULT_REPORT` when set, else to `fault-report.json` in pytest's temporary
directory; the summary at the end of the run names the file.
"""

from __future__ import annotations

import pytest

from tests.support.fault_report import REPORT, FaultReport

__all__ = ["FaultReport", "fault_report"]


@pytest.fixture(scope="session")
def fault_report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> FaultReport:
    home = tmp_path_factory.getbasetemp()
    if hasattr(request.config, "workerinput"):
        home = home.parent  # a worker of a parallel run: the report goes to the controller's directory
    REPORT.default_path = home / "fault-report.json"
    return REPORT
