"""The benchmark's child processes: each in its own process group, its output in a log file, and every
one of them stopped when the benchmark ends, however it ends (Ctrl-C, SIGTERM, an error, its own death).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

import httpx

CLI = [sys.executable, "-m", "worker.cli"]
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: Linux sends it SIGTERM if the benchmark is killed outright."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One child process (and its group), its output kept in `log_path`."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            list(args),
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (all its threads), from /proc; 0 elsewhere."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 8.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        else:  # its group may still hold a grandchild
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()


class Children:
    """Every child of the benchmark; `stop_all()` (also on leaving the `with`) ends them, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._running: list[Child] = []

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        child = Child(name, args, env or {}, self.log_dir)
        self._running.append(child)
        return child

    def start_cli(self, name: str, command: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        return self.start(name, [*CLI, *command], env)

    def stop(self, children: Sequence[Child]) -> None:
        for child in reversed(children):
            child.stop()
            if child in self._running:
                self._running.remove(child)

    def stop_all(self) -> None:
        self.stop(list(self._running))

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_all()


@contextlib.contextmanager
def interrupted_by_sigterm() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every `finally` (and so every child's stop) runs."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def wait_until_idle(children: Sequence[Child], timeout: float, busy: float = 0.1, step: float = 0.5) -> float:
    """Waits until `children` together use less than `busy` of a core (work left over from the last
    scenario, such as an overloaded app's backlog, must not run into the next); returns seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = sum(child.cpu_seconds() for child in children)
        time.sleep(step)
        if sum(child.cpu_seconds() for child in children) - before < busy * step:
            break
    return time.monotonic() - started


def wait_for_port(port: int, child: Child | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(child)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise StartupError(f"nothing listens on port {port} after {timeout:.0f}s", child)


def wait_for_http(url: str, child: Child | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(child)
        try:
            if httpx.get(url, timeout=0.5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise StartupError(f"{url} does not answer after {timeout:.0f}s", child)


class StartupError(RuntimeError):
    """A child did not come up; the message ends with the last lines of its log."""

    def __init__(self, message: str, child: Child | None = None) -> None:
        if child is not None:
            message = f"{child.name}: {message}\n--- {child.log_path} ---\n{child.tail()}"
        super().__init__(message)


def _check_alive(child: Child | None) -> None:
    if child is not None and not child.alive():
        raise StartupError(f"exited with code {child.popen.returncode}", child)


def start_redis(children: Children) -> tuple[str, Child | None]:
    """A private redis-server on a free port (no persistence); REDIS_URL when there is no redis-server."""
    if shutil.which("redis-server") is None:
        url = os.environ.get("REDIS_URL")
        if not url:
            raise StartupError("neither redis-server on PATH nor REDIS_URL in the environment")
        return url, None
    port = free_port()
    data_dir = children.log_dir / "redis"
    data_dir.mkdir(exist_ok=True)
    child = children.start(
        "redis",
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(data_dir), "--databases", "64"),
        ],
    )
    wait_for_port(port, child)
    return f"redis://127.0.0.1:{port}/0", child
