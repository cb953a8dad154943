"""The pipeline's processes for integration tests: a private Redis, a sandbox, a shim with its workers."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from cli.processes import RedisService, start_redis_server, stop_children
from cli.stack import stack_env
from sandbox.client import SandboxControl
from tests.support.processes import Process, free_port, start_cli, wait_for_http, wait_for_port

API_KEY = "test-caller-key-0123456789"
RETURN_URL = "https://app.example/done"


@dataclass
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen[bytes] | None = None  # None: a Redis we did not start
    directory: str | None = None
    private: RedisService | None = field(default=None, repr=False)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


def start_redis(
    extra: list[str] | None = None, port: int | None = None, directory: str | None = None
) -> RedisServer:
    """A private redis-server (see cli.processes); `directory` kept for a restart on the same data."""
    server = start_redis_server(*(extra or []), port=port, directory=directory)
    home = directory or str(server.temporary_directory)
    assert server.child is not None  # started here
    return RedisServer(server.url, server.port, server.child.popen, home, server)


def stop_redis(server: RedisServer) -> None:
    """SIGTERM (Redis writes what its AOF still holds), SIGKILL after 10 s."""
    if server.private is not None:
        server.private.stop(timeout=10)


@dataclass
class Sandbox(SandboxControl):
    """A sandbox process, and its controls (reset, faults, stats, connections)."""

    process: Process


def start_sandbox(*extra: str, env: dict[str, str] | None = None) -> Sandbox:
    port = free_port()
    process = start_cli(["sandbox", "--port", str(port), *extra], env=env, name="sandbox")
    try:
        wait_for_port(port, process)
    except BaseException:
        process.stop()  # a failed start leaves nothing running
        raise
    return Sandbox(f"http://127.0.0.1:{port}", process)


@dataclass
class Pipeline:
    """A shim and a worker in their own processes, with their own channel prefix."""

    shim_url: str
    redis_url: str
    prefix: str
    env: dict[str, str]
    shim: Process
    workers: list[Process] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def start_worker(self, concurrency: int = 4) -> Process:
        worker = start_cli(
            [
                "worker",
                "--concurrency",
                str(concurrency),
                "--hostname",
                f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}@%h",
            ],
            env=self.env,
            name="worker",
        )
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        """Every process at once (SIGTERM to all, then SIGKILL to what is left after 10 s)."""
        stop_children([*self.workers, self.shim], timeout=10)


def pipeline_env(redis_url: str, sandbox_url: str, shim_port: int, **settings: Any) -> dict[str, str]:
    """A test pipeline's environment (cli.stack.stack_env): its own channel prefix, the sandbox's
    default account, two caller keys, `settings` on top."""
    tests = {
        "OKTOPOST_ACCOUNT_ID": "demo-account",
        "OKTOPOST_API_KEY": "demo-key",
        "SHIM_API_KEYS": f"another-caller-key-0123456789,{API_KEY}",
        "ALLOWED_RETURN_URLS": "https://app.example,http://127.0.0.1:9",
        "CHANNEL_PREFIX": f"t{uuid.uuid4().hex[:8]}",
        "LOG_LEVEL": "DEBUG",
        "OKTOPOST_RATE_LIMIT": "100000/second",
    }
    return stack_env(redis_url, f"http://127.0.0.1:{shim_port}", sandbox_url, settings={**tests, **settings})


def start_pipeline(redis_url: str, sandbox_url: str, workers: int = 1, **settings: Any) -> Pipeline:
    port = free_port()
    env = pipeline_env(redis_url, sandbox_url, port, **settings)
    shim = start_cli(["shim", "--port", str(port)], env=env, name="shim")
    pipeline = Pipeline(f"http://127.0.0.1:{port}", redis_url, env["CHANNEL_PREFIX"], env, shim)
    try:
        for _ in range(workers):
            pipeline.start_worker()
        wait_for_http(f"{pipeline.shim_url}/healthz", shim)
    except BaseException:
        pipeline.stop()  # a failed start leaves nothing running
        raise
    return pipeline
