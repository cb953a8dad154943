"""Starting real processes for the integration tests: free ports, waiting for a socket, clean stops."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "worker.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def wait_for_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=0.5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} does not answer after {timeout}s")


class Process:
    """A child process in its own process group, stopped with SIGTERM then SIGKILL, its output kept."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None, name: str = "") -> None:
        self.name = name or args[0]
        self.log_path = (
            Path(os.environ.get("TMPDIR", "/tmp")) / f"okc-{self.name}-{os.getpid()}-{time.time_ns()}.log"
        )
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            list(args),
            env=full_env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.popen.returncode


def start_cli(command: Sequence[str], env: Mapping[str, str] | None = None, name: str = "") -> Process:
    return Process([*CLI, *command], env=env, name=name or command[0])
