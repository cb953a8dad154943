"""A Redis for `up` and `demo`: REDIS_URL when it answers, else a private redis-server from PATH, else
fakeredis's TCP server in a child process (`python -m cli.embedded_redis --port P`).

The private servers keep nothing on disk and live only as long as the command that started them.
`--redis KIND` or `OKC_EMBEDDED_REDIS=KIND` (external, redis-server, fakeredis) forces one kind.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

import redis

from cli.processes import (
    DISCARD,
    Child,
    RedisKind,
    RedisService,
    StartupError,
    redacted_url,
    start_on_free_port,
    start_redis_server,
)

__all__ = [
    "EmbeddedRedisError",
    "RedisKind",
    "RedisService",
    "ensure_redis",
    "redacted_url",
    "redis_preference",
]

REDIS_KINDS: tuple[RedisKind, ...] = ("external", "redis-server", "fakeredis")
PREFERENCE_ENV = "OKC_EMBEDDED_REDIS"
INSTALL_TOOLS = "pip install 'oktopost-connect[tools]'"

PING_TIMEOUT = 1.0  # seconds a REDIS_URL gets to answer PING before we start our own


class EmbeddedRedisError(Exception):
    """No Redis could be found or started; the message fits on one line."""


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
        return _embedded(lambda: start_redis_server(name="embedded redis-server"))
    if prefer == "redis-server":
        raise EmbeddedRedisError("redis-server is not on PATH")
    if fakeredis_available():
        return _embedded(start_fakeredis)
    raise EmbeddedRedisError(
        "no Redis: REDIS_URL does not answer, redis-server is not on PATH and fakeredis is not installed"
        f" ({INSTALL_TOOLS})"
    )


def start_fakeredis() -> RedisService:
    """fakeredis's TCP server in a child process of ours (`serve_fakeredis`), on a free port."""

    def start(port: int) -> Child:
        command = [sys.executable, "-m", "cli.embedded_redis", "--port", str(port)]
        return Child("embedded fakeredis", command, log_path=DISCARD)

    child, port = start_on_free_port(start)
    return RedisService.private("fakeredis", port, child)


def _embedded(start: Callable[[], RedisService]) -> RedisService:
    try:
        return start()
    except StartupError as error:
        raise EmbeddedRedisError(str(error).splitlines()[0]) from None


def serve_fakeredis(host: str, port: int) -> int:
    """The child process behind `start_fakeredis`: fakeredis's TCP server until SIGTERM or SIGINT."""
    try:
        from fakeredis import TcpFakeServer
    except ImportError:
        print(f"embedded_redis: fakeredis is not installed ({INSTALL_TOOLS})", file=sys.stderr)
        return 2
    server = TcpFakeServer((host, port), server_type="redis")

    def _stop(_signum: int, _frame: object) -> None:
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
        prog="python -m cli.embedded_redis", description="Serve an in-memory fakeredis over TCP."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    return serve_fakeredis(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
