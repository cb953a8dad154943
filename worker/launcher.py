"""`oktopost-connect up`: shim, worker, sandbox and (when needed) Redis as child processes, stopped together.

Each child is a real `oktopost-connect shim|worker|sandbox` process in its own process group, so Ctrl-C
reaches `up` alone and `up` stops every group: SIGTERM, then SIGKILL after a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import httpx
import redis

from worker.keys import RedisNames

if TYPE_CHECKING:
    from worker.embedded_redis import RedisKind, RedisService

STOP_SECONDS = 5.0  # between SIGTERM and SIGKILL; the shim's graceful shutdown takes at most 5 s
READY_SECONDS = 30.0  # how long the shim, the sandbox and a worker get to be ready after start
WORKER_FRESH_SECONDS = 5.0  # a worker that marked itself consuming this recently counts as ready
CLI = (sys.executable, "-m", "worker.cli")


class LaunchError(Exception):
    """The stack could not start or stopped on its own; the message fits on one line."""


# -- child processes in their own groups ------------------------------------------------------------------


def die_with_parent() -> None:
    """Run in a child before exec (Linux): SIGTERM it when its parent dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def spawn(
    args: Sequence[str], env: Mapping[str, str] | None = None, output: IO[bytes] | int | None = None
) -> subprocess.Popen[bytes]:
    """A child in a new session (so its own process group), which dies with us; output to `output`."""
    return subprocess.Popen(
        list(args),
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=True,
        preexec_fn=die_with_parent,  # children are started before any thread of ours exists
    )


def has_exited(process: subprocess.Popen[bytes]) -> bool:
    """True once the child has exited, without reaping it, so its pid (the group id) stays ours."""
    if process.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    if process.returncode is not None:
        return  # reaped: the group id may belong to someone else by now
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def stop_groups(
    processes: Iterable[subprocess.Popen[bytes]],
    timeout: float = STOP_SECONDS,
    hurry: Callable[[], bool] | None = None,
) -> None:
    """SIGTERM every group at once, SIGKILL what is left after `timeout` (or as soon as `hurry()` is true,
    e.g. on a second Ctrl-C), then reap the leaders.

    A leader is reaped only after its group got SIGKILL, so no straggler of the group survives it.
    """
    running = [process for process in processes if process.returncode is None]
    for process in running:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(has_exited(process) for process in running):
        if hurry is not None and hurry():
            break
        time.sleep(0.05)
    for process in running:
        _signal_group(process, signal.SIGKILL)
    for process in running:
        # a process in uninterruptible I/O may outlive SIGKILL for a moment; we do not hang on it
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


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
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None = None


def _answers(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=0.5).status_code < 500
        except httpx.HTTPError:
            return False

    return check


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
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def public_base_url(self) -> str:
        return self.env["PUBLIC_BASE_URL"]

    @property
    def prefix(self) -> str:
        return self.env.get("CHANNEL_PREFIX", "oktopost")

    def start_child(self, name: str, args: Sequence[str]) -> Child:
        log_path = None
        output: IO[bytes] | None = None
        if self.options.log_dir is not None:
            log_path = self.options.log_dir / f"{name}.log"
            output = log_path.open("ab")
            self._logs.append(output)
        child = Child(name, spawn([*CLI, *args], self.env, output), log_path)
        self.children.append(child)
        return child

    def exited_child(self) -> Child | None:
        """The first child (the embedded Redis included) that is no longer running."""
        for child in self.children:
            if has_exited(child.process):
                return child
        if self.redis.process is not None and has_exited(self.redis.process):
            return Child(f"embedded {self.redis.kind}", self.redis.process)
        return None

    def exit_reason(self, child: Child) -> str:
        code = child.process.poll()
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        where = f" (its log: {child.log_path})" if child.log_path else ""
        return f"{child.name} {how}{where}"

    def wait_until_ready(self, timeout: float = READY_SECONDS, stop: StopSignal | None = None) -> None:
        """Until the shim (and sandbox) answer over HTTP and a worker is consuming; LaunchError when a
        child dies or time runs out. A worker marks itself in Redis once Celery calls it ready."""
        waits: list[tuple[str, Callable[[], bool]]] = [
            (f"{self.shim_url}/healthz", _answers(f"{self.shim_url}/healthz"))
        ]
        if self.sandbox_url:
            url = f"{self.sandbox_url}/_sandbox/connections"
            waits.append((url, _answers(url)))
        workers = RedisNames(self.prefix).workers
        with redis.Redis.from_url(
            self.env["REDIS_URL"], socket_timeout=1, socket_connect_timeout=1
        ) as client:

            def consuming() -> bool:
                try:
                    return bool(client.zcount(workers, time.time() - WORKER_FRESH_SECONDS, "+inf"))
                except redis.RedisError:
                    return False

            waits.append(("a worker consuming tasks", consuming))
            deadline = time.monotonic() + timeout
            while waits:
                if stop is not None and stop.requested:
                    raise LaunchError(f"stopped by {stop.name} while starting")
                exited = self.exited_child()
                if exited is not None:
                    raise LaunchError(f"{self.exit_reason(exited)} while starting")
                if time.monotonic() > deadline:
                    raise LaunchError(f"{waits[0][0]} did not answer within {timeout:.0f}s")
                if waits[0][1]():
                    waits.pop(0)
                    continue
                time.sleep(0.05)

    def stop(self, timeout: float = STOP_SECONDS, hurry: Callable[[], bool] | None = None) -> None:
        # Shim and worker first, then what they call: a worker finishing its tasks in hand (Celery's warm
        # shutdown) still needs the sandbox and Redis, and would otherwise retry until SIGKILL.
        pipeline = [child.process for child in self.children if child.name != "sandbox"]
        stop_groups(pipeline, timeout, hurry)
        stop_groups([child.process for child in self.children if child.name == "sandbox"], timeout, hurry)
        if self.redis.process is not None:
            stop_groups([self.redis.process], timeout, hurry)
        self.redis.stop(timeout)
        for log in self._logs:
            log.close()

    def describe(self) -> list[str]:
        """What a developer needs: where everything listens, and the key to call the shim with."""
        lines = [
            f"shim       {self.shim_url}   (OpenAPI: {self.shim_url}/docs)",
            f"callbacks  {self.public_base_url}/v1/callback/{{flow_id}}",
        ]
        if self.sandbox_url:
            lines += [
                f"sandbox    {self.sandbox_url}   (local Oktopost; what it connected: /_sandbox/connections)",
                f"consent    {self.sandbox_url}/oauth/authorize?request=...   (scripts: &decision=approve)",
            ]
        else:
            lines.append(f"oktopost   {self.env.get('OKTOPOST_BASE_URL', 'https://api.oktopost.com')}")
        lines += [
            f"redis      {self.redis.describe()}",
            f"events     {self.prefix}:flow:{{flow_id}}  (all flows: {self.prefix}:events)",
            f"returns    ALLOWED_RETURN_URLS={self.env.get('ALLOWED_RETURN_URLS', '')}",
        ]
        if self.generated_key:
            lines.append(
                f"api key    {self.api_key}   (a throw-away dev key; set SHIM_API_KEYS to choose your own)"
            )
        else:
            lines.append("api key    one of SHIM_API_KEYS")
        return lines


def child_env(
    options: StackOptions,
    redis: RedisService,
    shim_url: str,
    sandbox_url: str | None,
    base: Mapping[str, str],
) -> tuple[dict[str, str], str, bool]:
    """The environment of every child, and the caller key (generated when SHIM_API_KEYS is unset)."""
    env = dict(base)
    env.update(options.extra_env)
    env["PYTHONUNBUFFERED"] = "1"
    env["REDIS_URL"] = redis.url
    if redis.embedded or not env.get("CELERY_BROKER_URL"):
        env["CELERY_BROKER_URL"] = redis.url
    if sandbox_url:
        # without credentials there is nothing to call but the sandbox, which reads the same pair (or its
        # defaults) from the same environment
        env["OKTOPOST_BASE_URL"] = sandbox_url
        if not env.get("OKTOPOST_API_KEY"):
            env.pop("OKTOPOST_API_KEY", None)
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
    for name, value in defaults.items():
        if options.override_env or not env.get(name):
            env[name] = value
    keys = [key.strip() for key in env.get("SHIM_API_KEYS", "").split(",") if key.strip()]
    generated = not keys
    if generated:
        keys = [f"dev-{secrets.token_urlsafe(24)}"]
        env["SHIM_API_KEYS"] = keys[0]
    return env, keys[0], generated


def check_settings(env: Mapping[str, str]) -> None:
    """The children's settings, validated once here: a bad one is one line (LaunchError), not a dead child."""
    from worker.settings import ConfigError, Settings, load_settings

    fields = {name.lower(): value for name, value in env.items() if name.lower() in Settings.model_fields}
    try:
        load_settings(**fields)
    except ConfigError as error:
        raise LaunchError(str(error)) from None


def start_stack(options: StackOptions, base_env: Mapping[str, str] | None = None) -> Stack:
    """Redis first (found or started), then sandbox, shim and worker; LaunchError with one line if not."""
    from worker.embedded_redis import EmbeddedRedisError, RedisService, ensure_redis

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


# -- running in the foreground -----------------------------------------------------------------------------


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


def run_up(options: StackOptions, out: IO[str] = sys.stdout) -> int:
    """`oktopost-connect up`: start, print where everything is, wait for Ctrl-C/SIGTERM or a dead child."""
    stop = StopSignal()
    stop.install()
    try:
        stack = start_stack(options)
    except LaunchError as error:
        print(f"oktopost-connect up: {error}", file=sys.stderr)
        return 2
    exit_code = 0
    try:
        stack.wait_until_ready(stop=stop)
        print("oktopost-connect up: ready (Ctrl-C stops everything)", file=out)
        for line in stack.describe():
            print(f"  {line}", file=out)
        print(
            f"  try        curl -s -X POST {stack.shim_url}/v1/authorizations"
            " -H 'Authorization: Bearer <api key>' -H 'Content-Type: application/json'"
            ' -d \'{"network": "LinkedIn"}\'',
            file=out,
            flush=True,
        )
        while not stop.requested:
            exited = stack.exited_child()
            if exited is not None:
                print(
                    f"oktopost-connect up: {stack.exit_reason(exited)}; stopping the others", file=sys.stderr
                )
                exit_code = 1
                break
            time.sleep(0.2)
    except LaunchError as error:
        if not stop.requested:
            print(f"oktopost-connect up: {error}", file=sys.stderr)
            exit_code = 1
    finally:
        signals_before = stop.count
        if stop.requested:
            print(
                f"oktopost-connect up: {stop.name}, stopping (press Ctrl-C again to kill at once)",
                file=out,
                flush=True,
            )
        stack.stop(hurry=lambda: stop.count > signals_before)
    return exit_code
