"""The stack `up` and `demo` run: shim, worker, sandbox and (when needed) Redis as child processes,
started in order, watched, and stopped together.

Each child is a real `oktopost-connect shim|worker|sandbox` process (see cli.processes): Ctrl-C reaches
the launching command alone, and it stops every group.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from cli.embedded_redis import EmbeddedRedisError, RedisKind, RedisService, ensure_redis
from cli.processes import CLI, STOP_SECONDS, Child, answers_http, port_is_free, stop_children
from sandbox.client import SandboxControl
from worker.keys import RedisNames

READY_SECONDS = 30.0  # how long the shim, the sandbox and a worker get to be ready after start
WORKER_FRESH_SECONDS = 5.0  # a worker that marked itself consuming this recently counts as ready


class LaunchError(Exception):
    """The stack could not start or stopped on its own; the message fits on one line."""


class StopSignal:
    """SIGINT and SIGTERM set a flag instead of interrupting whatever runs, so cleanup always happens."""

    def __init__(self) -> None:
        self.name = ""
        self.count = 0

    @property
    def requested(self) -> bool:
        return self.count > 0

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.name = self.name or signal.Signals(signum).name
        self.count += 1


# -- the stack ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackOptions:
    shim_port: int = 8000
    sandbox_port: int = 8090
    concurrency: int = 8
    host: str = "127.0.0.1"
    with_sandbox: bool | None = None  # None: when OKTOPOST_API_KEY is not in the environment
    redis: RedisKind | None = None  # None: REDIS_URL if it answers, else redis-server, else fakeredis
    log_dir: Path | None = None  # None: the children write to our terminal
    override_env: bool = False  # demo: our URLs win over PUBLIC_BASE_URL / ALLOWED_RETURN_URLS in the env
    worker_name: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Stack:
    """A running shim + worker (+ sandbox, + embedded Redis); `stop()` ends all of them."""

    options: StackOptions
    redis: RedisService
    env: dict[str, str]
    api_key: str
    generated_key: bool
    shim_url: str
    sandbox_url: str | None
    children: list[Child] = field(default_factory=list)

    @property
    def public_base_url(self) -> str:
        return self.env["PUBLIC_BASE_URL"]

    @property
    def prefix(self) -> str:
        return self.env.get("CHANNEL_PREFIX", "oktopost")

    def start_child(self, name: str, args: Sequence[str]) -> Child:
        """`oktopost-connect ARGS...`, its output in `{log_dir}/{name}.log` (or our terminal)."""
        log_path = self.options.log_dir / f"{name}.log" if self.options.log_dir else None
        child = Child(name, [*CLI, *args], env=self.env, log_path=log_path)
        self.children.append(child)
        return child

    def exited_child(self) -> Child | None:
        """The first child (the embedded Redis included) that is no longer running."""
        server = [self.redis.child] if self.redis.child is not None else []
        return next((child for child in [*self.children, *server] if child.exited()), None)

    def wait_until_ready(self, timeout: float = READY_SECONDS, stop: StopSignal | None = None) -> None:
        """Until the shim (and sandbox) answer over HTTP and a worker is consuming; LaunchError when a
        child dies or time runs out. A worker marks itself in Redis once Celery calls it ready."""
        waits: list[tuple[str, Callable[[], bool]]] = [
            (f"{self.shim_url}/healthz", lambda: answers_http(f"{self.shim_url}/healthz"))
        ]
        if self.sandbox_url:
            url = SandboxControl(self.sandbox_url).connections_url
            waits.append((url, lambda: answers_http(url)))
        workers = RedisNames(self.prefix).workers
        with redis.Redis.from_url(
            self.env["REDIS_URL"], socket_timeout=1, socket_connect_timeout=1
        ) as client:

            def consuming() -> bool:
                try:
                    seconds, microseconds = client.time()  # the marks are on Redis's clock
                    fresh_since = int(seconds) + int(microseconds) / 1e6 - WORKER_FRESH_SECONDS
                    return bool(client.zcount(workers, fresh_since, "+inf"))
                except redis.RedisError:
                    return False

            waits.append(("a worker consuming tasks", consuming))
            deadline = time.monotonic() + timeout
            while waits:
                if stop is not None and stop.requested:
                    raise LaunchError(f"stopped by {stop.name} while starting")
                exited = self.exited_child()
                if exited is not None:
                    raise LaunchError(f"{exited.exit_reason()} while starting")
                if time.monotonic() > deadline:
                    raise LaunchError(f"{waits[0][0]} did not answer within {timeout:.0f}s")
                if waits[0][1]():
                    waits.pop(0)
                    continue
                time.sleep(0.05)

    def stop(self, timeout: float = STOP_SECONDS, hurry: Callable[[], bool] | None = None) -> None:
        # Shim and worker first, then what they call: a worker finishing its tasks in hand (Celery's warm
        # shutdown) still needs the sandbox and Redis, and would otherwise retry until SIGKILL.
        stop_children([child for child in self.children if child.name != "sandbox"], timeout, hurry)
        stop_children([child for child in self.children if child.name == "sandbox"], timeout, hurry)
        if self.redis.child is not None:
            stop_children([self.redis.child], timeout, hurry)
        self.redis.stop(timeout)


def stack_env(
    redis_url: str,
    shim_url: str,
    sandbox_url: str | None = None,
    *,
    base: Mapping[str, str] | None = None,
    keep_broker: bool = False,
    settings: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """What a stack's shim and workers run with (`up`, the demo, the bench and the integration tests):
    `base`, then the stack's wiring (its Redis for flows and, unless `keep_broker` keeps the broker URL
    `base` has, for the broker; its sandbox as Oktopost; its shim's URL as PUBLIC_BASE_URL unless `base`
    has one), then `settings` on top, by setting name in any case (`token_ttl_seconds=3`)."""
    env = dict(base or {})
    env["PYTHONUNBUFFERED"] = "1"
    env["REDIS_URL"] = redis_url
    if not (keep_broker and env.get("CELERY_BROKER_URL")):
        env["CELERY_BROKER_URL"] = redis_url
    if sandbox_url:
        # without credentials there is nothing to call but the sandbox, which reads the same pair (or its
        # defaults) from the same environment
        env["OKTOPOST_BASE_URL"] = sandbox_url
        if not env.get("OKTOPOST_API_KEY"):
            env.pop("OKTOPOST_API_KEY", None)
    if not env.get("PUBLIC_BASE_URL"):
        env["PUBLIC_BASE_URL"] = shim_url
    env.update({name.upper(): str(value) for name, value in (settings or {}).items()})
    return env


def child_env(
    options: StackOptions,
    redis: RedisService,
    shim_url: str,
    sandbox_url: str | None,
    base: Mapping[str, str],
) -> tuple[dict[str, str], str, bool]:
    """The environment of every child, and the caller key (generated when SHIM_API_KEYS is unset)."""
    base = {**base, **options.extra_env}
    defaults = {
        "PUBLIC_BASE_URL": shim_url,
        # the shim's own origin, and return pages a developer serves locally
        "ALLOWED_RETURN_URLS": ",".join(
            dict.fromkeys(
                [
                    shim_url,
                    shim_url.replace("127.0.0.1", "localhost"),
                    "http://127.0.0.1",
                    "http://localhost",
                    "http://127.0.0.1:3000",
                    "http://localhost:3000",
                ]
            )
        ),
    }
    if not options.override_env:  # the environment's own values win
        defaults.update({name: base[name] for name in defaults if base.get(name)})
    env = stack_env(
        redis.url, shim_url, sandbox_url, base=base, keep_broker=not redis.embedded, settings=defaults
    )
    keys = [key.strip() for key in env.get("SHIM_API_KEYS", "").split(",") if key.strip()]
    generated = not keys
    if generated:
        keys = [f"dev-{secrets.token_urlsafe(24)}"]
        env["SHIM_API_KEYS"] = keys[0]
    return env, keys[0], generated


def check_settings(env: Mapping[str, str]) -> None:
    """The children's settings, validated once here: a bad one is one line (LaunchError), not a dead child."""
    from worker.config.settings import ConfigError, Settings, load_settings

    fields = {name.lower(): value for name, value in env.items() if name.lower() in Settings.model_fields}
    try:
        load_settings(**fields)
    except ConfigError as error:
        raise LaunchError(str(error)) from None


def start_stack(options: StackOptions, base_env: Mapping[str, str] | None = None) -> Stack:
    """Redis first (found or started), then sandbox, shim and worker; LaunchError with one line if not."""
    base = dict(os.environ if base_env is None else base_env)
    with_sandbox = options.with_sandbox
    if with_sandbox is None:
        with_sandbox = not base.get("OKTOPOST_API_KEY")
    ports = [("--port", options.shim_port)] + (
        [("--sandbox-port", options.sandbox_port)] if with_sandbox else []
    )
    for flag, port in ports:
        if not 0 < port < 65536:
            raise LaunchError(f"{flag} must be a port number from 1 to 65535, not {port}")
        if not port_is_free(port, options.host):
            raise LaunchError(f"port {port} is in use (choose another with {flag})")
    shim_url = f"http://{_url_host(options.host)}:{options.shim_port}"
    sandbox_url = f"http://{_url_host(options.host)}:{options.sandbox_port}" if with_sandbox else None
    redis_url = base.get("REDIS_URL") or "redis://localhost:6379/0"
    # settings first: a bad one (REDIS_URL included) is reported, not papered over by an embedded Redis
    check_settings(child_env(options, RedisService(redis_url, "external"), shim_url, sandbox_url, base)[0])
    try:
        redis = ensure_redis(redis_url, options.redis)
    except EmbeddedRedisError as error:
        raise LaunchError(str(error)) from None
    env, api_key, generated = child_env(options, redis, shim_url, sandbox_url, base)
    stack = Stack(options, redis, env, api_key, generated, shim_url, sandbox_url)
    try:
        if sandbox_url:
            stack.start_child(
                "sandbox", ["sandbox", "--host", options.host, "--port", str(options.sandbox_port)]
            )
        stack.start_child("shim", ["shim", "--host", options.host, "--port", str(options.shim_port)])
        worker = ["worker", "--concurrency", str(options.concurrency)]
        if options.worker_name:
            worker += ["--hostname", options.worker_name]
        stack.start_child("worker", worker)
    except OSError as error:
        stack.stop()
        raise LaunchError(f"cannot start a child process: {error}") from None
    return stack


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host
