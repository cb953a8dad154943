"""A private redis-server on loopback for `up`, the bench and the tests: nothing kept on disk unless asked."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cli.processes.children import DISCARD, STOP_SECONDS, Child
from cli.processes.readiness import StartupError, start_on_free_port, wait_for_port


def redis_server_command(port: int, directory: Path | str, *extra: str) -> list[str]:
    """A private redis-server on loopback keeping nothing on disk (no RDB, no AOF) unless `extra` says so."""
    return [
        "redis-server",
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        *("--dir", str(directory), *extra),
    ]


@dataclass
class PrivateRedis:
    """A Redis server of our own on loopback; `stop()` ends it and removes its temporary directory."""

    port: int
    child: Child
    temporary_directory: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        self.child.stop(timeout)
        if self.temporary_directory is not None:
            shutil.rmtree(self.temporary_directory, ignore_errors=True)
            self.temporary_directory = None


def start_redis_server(
    *extra: str,
    port: int | None = None,
    directory: Path | str | None = None,
    log_path: Path | None = None,
    name: str = "redis-server",
) -> PrivateRedis:
    """A private redis-server (see `redis_server_command`), once it accepts connections; StartupError if
    not. Without `port` a free one; without `directory` a temporary one, removed by `stop()`."""
    temporary = Path(tempfile.mkdtemp(prefix="okc-redis-")) if directory is None else None
    home = temporary or Path(str(directory))
    log = log_path or DISCARD

    def start(on: int) -> Child:
        return Child(name, redis_server_command(on, home, *extra), log_path=log)

    try:
        if port is None:
            child, port = start_on_free_port(start)
        else:
            child = start(port)
            try:
                wait_for_port(port, child)
            except StartupError:
                child.stop()
                raise
    except BaseException:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    return PrivateRedis(port, child, temporary)
