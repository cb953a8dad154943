"""Fixtures of the fault suite: the figures every part adds up, printed at the end and written as JSON.

The JSON goes to `$OKC_FAULT_REPORT` when set, else to `fault-report.json` in pytest's temporary
directory; the summary at the end of the run names the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# The figures every part reports; anything else a part records is kept under "details".
FIGURES = ("flows", "faults_injected", "lost", "duplicated_terminal", "server_errors")
_HEADINGS = ("flows run", "faults injected", "lost", "dup. terminal", "5xx")


@dataclass
class FaultReport:
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    written_to: Path | None = None

    def record(self, part: str, **figures: Any) -> None:
        """Adds `figures` to the part's totals; numbers add up, anything else goes to its details."""
        entry = self.parts.setdefault(part, {**dict.fromkeys(FIGURES, 0), "details": {}})
        for name, value in figures.items():
            if name in FIGURES:
                entry[name] += value
            else:
                entry["details"][name] = value

    def totals(self) -> dict[str, int]:
        return {name: sum(part[name] for part in self.parts.values()) for name in FIGURES}

    def as_json(self) -> dict[str, Any]:
        return {"parts": self.parts, "totals": self.totals()}

    def table(self) -> list[str]:
        width = max([len("part"), len("total"), *(len(name) for name in self.parts)])
        rows: list[tuple[str, ...]] = [("part".ljust(width), *_HEADINGS)]
        for name, figures in sorted(self.parts.items()):
            rows.append((name.ljust(width), *(str(figures[key]) for key in FIGURES)))
        rows.append(("total".ljust(width), *(str(value) for value in self.totals().values())))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return [
            "  ".join(
                cell.rjust(w) if i else cell for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        ]


_REPORT = FaultReport()


@pytest.fixture(scope="session")
def fault_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultReport]:
    yield _REPORT
    target = os.environ.get("OKC_FAULT_REPORT")
    path = Path(target) if target else tmp_path_factory.getbasetemp() / "fault-report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_REPORT.as_json(), indent=2, sort_keys=True) + "\n")
    _REPORT.written_to = path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _REPORT.parts:
        return
    terminalreporter.section("fault suite figures")
    for line in _REPORT.table():
        terminalreporter.write_line(line)
    for name, figures in sorted(_REPORT.parts.items()):
        if figures["details"]:
            terminalreporter.write_line(f"{name}: {json.dumps(figures['details'], sort_keys=True)}")
    if _REPORT.written_to is not None:
        terminalreporter.write_line(f"written to {_REPORT.written_to}")
