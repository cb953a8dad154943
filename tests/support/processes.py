"""Starting real processes for the integration tests, on cli.processes: each test process in its own
group, its output in a log file under TMPDIR, stopped with SIGTERM then SIGKILL."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from cli.processes import CLI as CLI_ARGS
from cli.processes import Child, free_port, wait_for_http, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
CLI = list(CLI_ARGS)

__all__ = [
    "CLI",
    "ROOT",
    "Process",
    "busy_port",
    "free_port",
    "run_cli",
    "start_cli",
    "wait_for_http",
    "wait_for_port",
]


class Process(Child):
    """A child with our environment plus `env`, run from the repository's root."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None, name: str = "") -> None:
        name = name or args[0]
        log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
        log_path = log_dir / f"okc-{name}-{os.getpid()}-{time.time_ns()}.log"
        super().__init__(
            name,
            args,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            log_path=log_path,
            cwd=ROOT,
        )
        self.log_path: Path = log_path  # always a file: tests read it without a None check

    def stop(self, timeout: float = 10.0) -> int | None:
        return super().stop(timeout)


def start_cli(command: Sequence[str], env: Mapping[str, str] | None = None, name: str = "") -> Process:
    return Process([*CLI, *command], env=env, name=name or command[0])


@contextlib.contextmanager
def busy_port() -> Iterator[int]:
    """A local port something listens on for as long as the block runs."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def promtool() -> str:
    """Prometheus's checker (Debian's `prometheus` package)."""
    found = shutil.which("promtool")
    if found is None:  # never skipped: .ci/run installs Debian's prometheus package, which has it
        pytest.fail("promtool not found: install Debian's `prometheus` package")
    return found
