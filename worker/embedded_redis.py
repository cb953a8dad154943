"""A Redis for `up` and `demo`: REDIS_URL when it answers, else a private redis-server from PATH, else
fakeredis's TCP server in a child process (`python -m worker.embedded_redis --port P`).

The private servers keep nothing on disk and live only as long as the command that started them.
`--redis KIND` or `OKC_EMBEDDED_REDIS=KIND` (external, redis-server, fakeredis) forces one kind.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import redis

from worker.launcher import STOP_SECONDS, free_port, has_exited, spawn, stop_groups

RedisKind = Literal["external", "redis-server", "fakeredis"]
REDIS_KINDS: tuple[RedisKind, ...] = ("external", "redis-server", "fakeredis")
PREFERENCE_ENV = "OKC_EMBEDDED_REDIS"

PING_TIMEOUT = 1.0  # seconds a REDIS_URL gets to answer PING before we start our own
START_TIMEOUT = 15.0  # seconds a private server gets to answer PING after it was started
START_ATTEMPTS = 3  # another free port when a private server exits at start (its port was taken meanwhile)


class EmbeddedRedisError(Exception):
    """No Redis could be found or started; the message fits on one line."""


class _ExitedAtStart(EmbeddedRedisError):
    """A private server exited before it answered, most likely because its port was taken meanwhile."""


@dataclass
class RedisService:
    """A Redis the pipeline can use, and the private process behind it when we started one."""

    url: str
    kind: RedisKind
    process: subprocess.Popen[bytes] | None = None
    directory: str | None = None

    @property
    def embedded(self) -> bool:
        return self.process is not None

    def describe(self) -> str:
        where = redacted_url(self.url)
        return where if self.kind == "external" else f"{where} (embedded {self.kind}, in memory)"

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        if self.process is not None:
            stop_groups([self.process], timeout)
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def redacted_url(url: str) -> str:
    """The URL without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def redis_preference(option: str | None, env: Mapping[str, str]) -> RedisKind | None:
    """The kind forced by `--redis` (when not auto), else by OKC_EMBEDDED_REDIS; None: choose as usual."""
    for name, value in (("--redis", option), (PREFERENCE_ENV, env.get(PREFERENCE_ENV))):
        value = (value or "").strip().lower()
        if value in ("", "auto"):
            continue
        for kind in REDIS_KINDS:
            if value == kind:
                return kind
        raise EmbeddedRedisError(f"{name} must be one of auto, {', '.join(REDIS_KINDS)}, not {value!r}")
    return None


def answers_ping(url: str, timeout: float = PING_TIMEOUT) -> bool:
    """True when a Redis answers PING at `url`; EmbeddedRedisError when one answers but refuses us
    (a wrong password is a mistake to report, not a reason to start another Redis)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as error:
        raise EmbeddedRedisError(f"Redis at {redacted_url(url)} refused the connection: {error}") from None
    except redis.exceptions.ResponseError as error:
        if str(error).startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            raise EmbeddedRedisError(
                f"Redis at {redacted_url(url)} refused the connection: {error}"
            ) from None
        return False
    except (redis.exceptions.RedisError, OSError, ValueError):
        return False
    finally:
        client.close()


def fakeredis_available() -> bool:
    try:
        import fakeredis
        import lupa  # noqa: F401  (the flow store runs Lua scripts)
    except ImportError:
        return False
    return hasattr(fakeredis, "TcpFakeServer")


def ensure_redis(url: str | None, prefer: RedisKind | None = None) -> RedisService:
    """`url` when it answers PING, else a private server (`prefer` forces one kind, for tests and timing)."""
    if prefer in (None, "external") and url and answers_ping(url):
        return RedisService(url, "external")
    if prefer == "external":
        raise EmbeddedRedisError(f"Redis at {redacted_url(url or '')} does not answer PING")
    if prefer in (None, "redis-server") and shutil.which("redis-server"):
        return start_redis_server()
    if prefer == "redis-server":
        raise EmbeddedRedisError("redis-server is not on PATH")
    if fakeredis_available():
        return start_fakeredis()
    raise EmbeddedRedisError(
        "no Redis: REDIS_URL does not answer, redis-server is not on PATH and fakeredis[lua] is not installed"
        " (pip install 'fakeredis[lua]')"
    )


def start_redis_server() -> RedisService:
    return _start_with_retries(_start_redis_server_once)


def start_fakeredis() -> RedisService:
    return _start_with_retries(_start_fakeredis_once)


def _start_with_retries(start: Callable[[], RedisService]) -> RedisService:
    """A free port can be taken between our probe and the server's bind: then try another one."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return start()
        except _ExitedAtStart as error:
            if attempt == START_ATTEMPTS:
                raise EmbeddedRedisError(str(error)) from None
    raise AssertionError("unreachable")


def redis_server_command(port: int, directory: str, *extra: str) -> list[str]:
    """A private redis-server on loopback keeping nothing on disk (no RDB, no AOF) unless `extra` says so."""
    return [
        "redis-server",
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory),
        *extra,
    ]


def _start_redis_server_once() -> RedisService:
    port = free_port()
    directory = tempfile.mkdtemp(prefix="okc-redis-")
    process = spawn(redis_server_command(port, directory), output=subprocess.DEVNULL)
    return _wait_until_ready(RedisService(f"redis://127.0.0.1:{port}/0", "redis-server", process, directory))


def _start_fakeredis_once() -> RedisService:
    port = free_port()
    process = spawn(
        [sys.executable, "-m", "worker.embedded_redis", "--port", str(port)], output=subprocess.DEVNULL
    )
    return _wait_until_ready(RedisService(f"redis://127.0.0.1:{port}/0", "fakeredis", process))


def _wait_until_ready(service: RedisService) -> RedisService:
    deadline = time.monotonic() + START_TIMEOUT
    assert service.process is not None
    while time.monotonic() < deadline:
        if has_exited(service.process):
            service.stop()
            raise _ExitedAtStart(
                f"the embedded {service.kind} exited at start (code {service.process.returncode})"
            )
        try:
            if answers_ping(service.url, timeout=0.2):
                return service
        except EmbeddedRedisError:
            service.stop()
            raise
        time.sleep(0.05)
    service.stop()
    raise EmbeddedRedisError(f"the embedded {service.kind} did not answer PING within {START_TIMEOUT:.0f}s")


def serve_fakeredis(host: str, port: int) -> int:
    """The child process behind `start_fakeredis`: fakeredis's TCP server until SIGTERM or SIGINT."""
    try:
        from fakeredis import TcpFakeServer
    except ImportError:
        print("embedded_redis: fakeredis is not installed (pip install 'fakeredis[lua]')", file=sys.stderr)
        return 2
    server = TcpFakeServer((host, port), server_type="redis")

    def _stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        # ends the per-connection loops, which otherwise run until their client leaves
        shutdown_event = getattr(server, "_shutdown_event", None)
        if shutdown_event is not None:
            shutdown_event.set()
        server.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.embedded_redis", description="Serve an in-memory fakeredis over TCP."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    return serve_fakeredis(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
