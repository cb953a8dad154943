"""The fault suite's figures: what every part adds up, printed at the end of the run and written as JSON.

The JSON goes to `$OKC_FAULT_REPORT` when set, else to `fault-report.json` in pytest's temporary
directory; the summary at the end of the run names the file.
"""

from __future__ import annotations

import json
import os
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
    default_path: Path | None = None  # fault-report.json in the run's temporary directory
    written_to: Path | None = None

    def record(self, part: str, **figures: Any) -> None:
        """Adds `figures` to the part's totals; numbers add up, anything else goes to its details."""
        entry = self.parts.setdefault(part, {**dict.fromkeys(FIGURES, 0), "details": {}})
        for name, value in figures.items():
            if name in FIGURES:
                entry[name] += value
            else:
                entry["details"][name] = value

    def merge(self, parts: dict[str, dict[str, Any]]) -> None:
        """Another process's parts (a worker's of a parallel run) added to ours."""
        for name, figures in parts.items():
            self.record(name, **{key: figures[key] for key in FIGURES}, **figures["details"])

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


REPORT = FaultReport()
_WORKER_OUTPUT = "okc_fault_report"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A worker of a parallel run hands its figures to the controller; a run of its own writes them."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        # execnet carries plain values only: the path as a string
        workeroutput[_WORKER_OUTPUT] = {"parts": REPORT.parts, "default_path": str(REPORT.default_path or "")}
        return
    target = os.environ.get("OKC_FAULT_REPORT")
    path = Path(target) if target else REPORT.default_path
    if REPORT.parts and path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(REPORT.as_json(), indent=2, sort_keys=True) + "\n")
        REPORT.written_to = path


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any) -> None:
    """xdist's controller, as a worker ends: its figures join the others'."""
    handed = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT)
    if handed:
        REPORT.merge(handed["parts"])
        if handed["default_path"]:
            REPORT.default_path = REPORT.default_path or Path(handed["default_path"])


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORT.parts:
        return
    terminalreporter.section("fault suite figures")
    for line in REPORT.table():
        terminalreporter.write_line(line)
    for name, figures in sorted(REPORT.parts.items()):
        if figures["details"]:
            terminalreporter.write_line(f"{name}: {json.dumps(figures['details'], sort_keys=True)}")
    if REPORT.written_to is not None:
        terminalreporter.write_line(f"written to {REPORT.written_to}")
