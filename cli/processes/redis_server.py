"""The Redis a stack uses (RedisService): one found at a URL, or a private one we started on loopback
(a redis-server for `up`, the bench and the tests, keeping nothing on disk unless asked; or fakeredis)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from cli.processes.children import DISCARD, STOP_SECONDS, Child
from cli.processes.readiness import StartupError, start_on_free_port, wait_for_port


def redis_server_command(port: int, directory: Path | str, *extra: str) -> list[str]:
    """A private redis-server on loopback keeping nothing on disk (no RDB, no AOF) unless `extra` says so."""
    return [
        "redis-server",
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        *("--dir", str(directory), *extra),
    ]


RedisKind = Literal["external", "redis-server", "fakeredis"]


@dataclass
class RedisService:
    """A Redis the pipeline can use: found at `url` (external), or a private server of ours on loopback
    (`child`), which `stop()` ends, removing its temporary directory."""

    url: str
    kind: RedisKind = "external"
    child: Child | None = None
    temporary_directory: Path | None = None

    @classmethod
    def private(cls, kind: RedisKind, port: int, child: Child, directory: Path | None = None) -> RedisService:
        return cls(f"redis://127.0.0.1:{port}/0", kind, child, directory)

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 6379

    @property
    def embedded(self) -> bool:
        return self.child is not None

    def describe(self) -> str:
        where = redacted_url(self.url)
        return where if self.kind == "external" else f"{where} (embedded {self.kind}, in memory)"

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        if self.child is not None:
            self.child.stop(timeout)
        if self.temporary_directory is not None:
            shutil.rmtree(self.temporary_directory, ignore_errors=True)
            self.temporary_directory = None


def redacted_url(url: str) -> str:
    """The URL without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def start_redis_server(
    *extra: str,
    port: int | None = None,
    directory: Path | str | None = None,
    log_path: Path | None = None,
    name: str = "redis-server",
) -> RedisService:
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
    return RedisService.private("redis-server", port, child, temporary)
