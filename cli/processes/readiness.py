"""Free ports, and waiting until a child accepts connections or answers HTTP (or dies trying)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx

from cli.processes.children import Child

READY_SECONDS = 30.0  # how long a server gets to accept connections after its start
START_ATTEMPTS = 3  # servers started on a free port: another port when one was taken meanwhile


class StartupError(Exception):
    """A child did not come up; the message ends with the last lines of its log, when it has one."""

    def __init__(self, message: str, child: Child | None = None) -> None:
        if child is not None:
            message = f"{child.name}: {message}"
            if child.tail():
                message = f"{message}\n--- {child.log_path} ---\n{child.tail()}"
        super().__init__(message)


class ExitedAtStart(StartupError):
    """The child exited before it answered (a server: most likely its port was taken meanwhile)."""


class NotReady(StartupError, TimeoutError):
    """The child runs but did not answer in time."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait(
    ready: Callable[[], bool], what: str, child: Child | None, timeout: float, pause: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if child is not None and child.exited():
            raise ExitedAtStart(f"exited with code {child.popen.poll()} at start", child)
        if ready():
            return
        if time.monotonic() > deadline:
            raise NotReady(f"{what} after {timeout:.0f}s", child)
        time.sleep(pause)


def wait_for_port(
    port: int, child: Child | None = None, timeout: float = READY_SECONDS, host: str = "127.0.0.1"
) -> None:
    """Until something accepts connections on host:port; ExitedAtStart when `child` exits meanwhile,
    NotReady after `timeout`."""

    def accepts() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            return False

    _wait(accepts, f"nothing listens on {host}:{port}", child, timeout)


def answers_http(url: str) -> bool:
    """True when `url` answers with anything but a server error."""
    try:
        return httpx.get(url, timeout=0.5).status_code < 500
    except httpx.HTTPError:
        return False


def wait_for_http(url: str, child: Child | None = None, timeout: float = READY_SECONDS) -> None:
    """Until `url` answers (see `answers_http`); ExitedAtStart or NotReady as `wait_for_port`."""
    _wait(lambda: answers_http(url), f"{url} does not answer", child, timeout)


def start_on_free_port(
    start: Callable[[int], Child], timeout: float = READY_SECONDS, attempts: int = START_ATTEMPTS
) -> tuple[Child, int]:
    """`start(port)` on a free port of loopback, once the child accepts connections there.

    A free port can be taken between our probe and the child's bind; the child then exits at start and
    another port is tried.
    """
    for attempt in range(1, attempts + 1):
        port = free_port()
        child = start(port)
        try:
            wait_for_port(port, child, timeout)
        except ExitedAtStart:
            child.stop()
            if attempt == attempts:
                raise
            continue
        except StartupError:
            child.stop()
            raise
        return child, port
    raise AssertionError("unreachable")
