"""docker-compose.yml's services, run without a Docker engine: each service's own command line (and
health check) as a local process, with the services' host names and ports swapped for local ones and a
deployer's `.env` (`.env.example`, the dev-profile settings documented at the top of docker-compose.yml,
secrets of their own); each one starts and serves, Redis with its ACL, and a flow runs through them.
With `.env.example`'s placeholders left in, the services refuse to start."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import pytest
import redis

from sandbox.client import SandboxControl
from tests.support.compose_spec import (
    BIN,
    DEPLOYER_SECRETS,
    argv_of,
    deployer_env,
    env_example,
    env_files_of,
    environment_of,
    interpolate,
    services,
)
from tests.support.flows import callback, consent
from tests.support.processes import ROOT, Process, free_port, wait_for_http, wait_for_port
from worker.follow.subscribe import follow_flow

TEST_ADMIN, TEST_ADMIN_PASSWORD = "okc-test-admin", secrets.token_hex(16)
_SERVICE_ADDRESS = re.compile(r"\b(localhost|127\.0\.0\.1|redis|shim|worker|flower|sandbox):(\d+)")


@dataclass
class Local:
    """Where each compose port is on this machine, and how a compose command line maps onto it."""

    ports: dict[int, int]  # container port -> local port
    redis_port: int
    tmp: str
    processes: list[Process] = field(default_factory=list)

    def text(self, value: str) -> str:
        def address(match: re.Match[str]) -> str:
            port = int(match.group(2))
            port = self.redis_port if port == 6379 else self.ports.get(port, port)
            return f"127.0.0.1:{port}"

        return _SERVICE_ADDRESS.sub(address, value)

    def argv(self, argv: list[str]) -> list[str]:
        local: list[str] = []
        for index, part in enumerate(argv):
            if index == 0 and (BIN / part).exists():
                part = str(BIN / part)  # oktopost-connect, celery, python of this virtualenv
            elif part == "0.0.0.0":
                part = "127.0.0.1"
            elif part.isdigit() and int(part) in self.ports and argv[index - 1] == "--port":
                part = str(self.ports[int(part)])
            elif part.startswith("--port="):
                part = f"--port={self.ports.get(int(part[7:]), int(part[7:]))}"
            local.append(self.text(part))
        return local

    def env(self, name: str, dot_env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The service's environment as compose would build it from `dot_env` (the deployer's .env by
        default), with local addresses."""
        service = services()[name]
        dot_env = deployer_env() if dot_env is None else dot_env
        env: dict[str, str] = {}
        for path in env_files_of(service):
            assert path == ".env", path
            env.update(dot_env)
        env.update({key: interpolate(value, dot_env) for key, value in environment_of(service).items()})
        return {key: self.text(value) for key, value in env.items()}

    def start(self, name: str, extra: list[str] | None = None) -> Process:
        argv = self.argv(argv_of(services()[name]["command"], deployer_env())) + (extra or [])
        process = Process(argv, env=self.env(name), name=f"compose-{name}")
        self.processes.append(process)
        return process

    def healthcheck(
        self, name: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        test = argv_of(services()[name]["healthcheck"]["test"])
        full_env = {**os.environ, **self.env(name), **(env or {})}
        if test[0] == "CMD-SHELL":
            # compose turns $$ into $, then the container's shell expands it
            command = self.text(interpolate(test[1], {}))
            command = command.replace("redis-cli", f"redis-cli -p {self.redis_port}")
            full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"  # this virtualenv's celery
            return subprocess.run(
                ["sh", "-c", command], env=full_env, capture_output=True, text=True, timeout=60, cwd=ROOT
            )
        assert test[0] == "CMD", test
        argv = self.argv(test[1:])
        if argv[0] == "redis-cli":
            argv[1:1] = ["-p", str(self.redis_port)]
        return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=60, cwd=ROOT)


def wait_until(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (httpx.HTTPError, redis.RedisError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def local() -> Iterator[Local]:
    """Every compose service started from its own command line, the redis one included."""
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        pytest.skip("redis-server is not installed")
    tmp = tempfile.mkdtemp(prefix="okc-compose-")
    stack = Local({port: free_port() for port in (8000, 5555, 8090)}, free_port(), tmp)
    redis_argv = argv_of(services()["redis"]["command"], deployer_env())
    # a user of the test's own, after compose's: to read the configuration the pipeline user may not
    admin = ["--user", TEST_ADMIN, "on", f">{TEST_ADMIN_PASSWORD}", "~*", "&*", "+@all"]
    stack.processes.append(
        Process(
            [*redis_argv, *admin, "--port", str(stack.redis_port), "--bind", "127.0.0.1", "--dir", tmp],
            name="compose-redis",
        )
    )
    try:
        wait_for_port(stack.redis_port)
        for name in ("sandbox", "shim", "worker"):
            stack.start(name)
        stack.start("flower", ["--address=127.0.0.1"])
        for port in stack.ports.values():
            wait_for_port(port, timeout=30)
        yield stack
    except BaseException:
        for process in stack.processes:
            print(f"--- {process.name}\n{process.output[-3000:]}")
        raise
    finally:
        for process in reversed(stack.processes):
            process.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def flower_auth() -> tuple[str, str]:
    return deployer_env()["FLOWER_USER"], deployer_env()["FLOWER_PASSWORD"]


def pipeline_redis(local: Local) -> redis.Redis:
    return redis.Redis(
        port=local.redis_port, username="pipeline", password=DEPLOYER_SECRETS["REDIS_PIPELINE_PASSWORD"]
    )


@pytest.mark.integration
def test_redis_command_turns_on_aof_and_noeviction_and_its_healthcheck_passes(local: Local) -> None:
    client = redis.Redis(port=local.redis_port, username=TEST_ADMIN, password=TEST_ADMIN_PASSWORD)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert int(cast(dict[str, str], client.config_get("maxmemory"))["maxmemory"]) > 0
    check = local.healthcheck("redis")
    assert check.returncode == 0, check
    refused = local.healthcheck("redis", {"REDISCLI_AUTH": "not-the-password"})
    assert refused.returncode != 0, refused


@pytest.mark.integration
def test_redis_lets_nobody_in_without_a_password_and_the_pipeline_user_not_at_its_configuration(
    local: Local,
) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=local.redis_port).ping()
    pipeline = pipeline_redis(local)
    assert pipeline.ping()
    for command in (("CONFIG", "GET", "*"), ("FLUSHALL",), ("KEYS", "*"), ("ACL", "LIST")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            pipeline.execute_command(*command)


@pytest.mark.integration
def test_sandbox_command_serves(local: Local) -> None:
    assert isinstance(SandboxControl(f"http://127.0.0.1:{local.ports[8090]}").connections(), list)


@pytest.mark.integration
def test_shim_command_serves_and_its_healthcheck_passes(local: Local) -> None:
    shim = f"http://127.0.0.1:{local.ports[8000]}"
    wait_for_http(f"{shim}/healthz")
    assert httpx.get(f"{shim}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{shim}/readyz", timeout=10).status_code == 200  # it reaches the compose Redis
    check = local.healthcheck("shim")
    assert check.returncode == 0, check


@pytest.mark.integration
def test_flower_command_shows_the_worker_behind_basic_auth(local: Local) -> None:
    flower = f"http://127.0.0.1:{local.ports[5555]}"
    workers = wait_until(
        "Flower lists the worker",
        lambda: httpx.get(f"{flower}/api/workers?refresh=1", auth=flower_auth(), timeout=15).json(),
    )
    assert len(workers) == 1
    assert next(iter(workers)) == f"celery@{socket.gethostname()}"
    assert {"oktopost.verify", "oktopost.complete"} <= set(next(iter(workers.values()))["registered"])
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401
    check = local.healthcheck("flower")
    assert check.returncode == 0, check
    assert httpx.get(f"{flower}/api/workers", auth=("admin", "wrong"), timeout=10).status_code == 401


@pytest.mark.integration
def test_worker_healthcheck_passes(local: Local) -> None:
    wait_until(
        "the worker answers Flower",
        lambda: httpx.get(
            f"http://127.0.0.1:{local.ports[5555]}/api/workers?status=1", auth=flower_auth(), timeout=15
        ).json(),
    )
    check = local.healthcheck("worker", {"HOSTNAME": socket.gethostname()})
    assert check.returncode == 0, check
    assert "pong" in check.stdout, check


@pytest.mark.integration
def test_a_flow_completes_through_the_compose_services(local: Local) -> None:
    """The dev profile as documented: shim, worker and sandbox as compose configures them."""
    shim = f"http://127.0.0.1:{local.ports[8000]}"
    flower = f"http://127.0.0.1:{local.ports[5555]}"
    wait_for_http(f"{shim}/healthz")
    # Flower's event receiver is up once it has a heartbeat: then it misses none of the flow's tasks.
    wait_until(
        "Flower sees the worker's heartbeat",
        lambda: any(
            httpx.get(f"{flower}/api/workers?status=1", auth=flower_auth(), timeout=15).json().values()
        ),
    )
    env = local.env("shim")
    key = env["SHIM_API_KEYS"].split(",")[0]
    return_url = env["ALLOWED_RETURN_URLS"].split(",")[0] + "/done"
    created = httpx.post(
        f"{shim}/v1/authorizations",
        json={"network": "LinkedIn", "return_url": return_url},
        headers={"Authorization": f"Bearer {key}"},
        timeout=15,
    )
    assert created.status_code == 201, created.text
    flow_id = created.json()["flow_id"]
    redirect = created.json()["redirect_url"]
    # The consent page is on the sandbox's --public-url, where a browser on the host reaches it.
    assert redirect.startswith(f"http://127.0.0.1:{local.ports[8090]}/oauth/authorize"), redirect
    answer = callback(consent(redirect))
    assert answer.status_code == 303, answer.text

    # followed as a subscribing service does, with the subscriber user's password
    client = redis.Redis(
        port=local.redis_port,
        username="subscriber",
        password=DEPLOYER_SECRETS["REDIS_SUBSCRIBER_PASSWORD"],
    )
    events = list(follow_flow(client, flow_id, env["CHANNEL_PREFIX"], timeout=30))
    assert events, events
    assert events[-1]["type"] == "connection.completed", events

    def verify_task_done() -> bool:
        tasks = httpx.get(f"{flower}/api/tasks", auth=flower_auth(), timeout=15).json()
        return any(
            t["name"] == "oktopost.verify" and t["args"] == repr([flow_id]) and t["state"] == "SUCCESS"
            for t in tasks.values()
        )

    wait_until("Flower lists the flow's verify task as done", verify_task_done)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "setting"),
    [("shim", "SHIM_API_KEYS"), ("worker", "SHIM_API_KEYS"), ("flower", "FLOWER_BASIC_AUTH")],
)
def test_a_service_refuses_to_start_with_the_placeholders_of_env_example(name: str, setting: str) -> None:
    """.env.example copied as it is, only the Redis passwords filled in (compose refuses it without them)."""
    dot_env = {**env_example(), "REDIS_PIPELINE_PASSWORD": DEPLOYER_SECRETS["REDIS_PIPELINE_PASSWORD"]}
    stack = Local({}, redis_port=free_port(), tmp="")
    argv = stack.argv(argv_of(services()[name]["command"], dot_env))
    env = {**os.environ, **stack.env(name, dot_env)}
    answer = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert answer.returncode == 2, answer
    assert f"invalid setting {setting}" in answer.stderr, answer.stderr
