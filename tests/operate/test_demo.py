"""`oktopost-connect demo` and `up` as a developer runs them: the demo completes both flows on any Redis it
finds or starts, and `up` leaves no process behind however it ends (SIGTERM, SIGINT, a child dying)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import CLI, ROOT, Process, busy_port, free_port
from tests.support.stack import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

MARKER = "OKC_TEST_MARKER"
SECRET_KEY = "okc-demo-test-real-oktopost-key-6c1f0e"
# the embedded Redis `up` starts in these tests: redis-server when on PATH, else fakeredis's server
EMBEDDED = "redis-server" if shutil.which("redis-server") else "fakeredis"
EMBEDDED_COMMAND = "redis-server" if EMBEDDED == "redis-server" else "-m cli.embedded_redis"


def run_demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The demo to its end; it must leave no process of its own behind."""
    marker = uuid.uuid4().hex
    result = subprocess.run(
        [*CLI, "demo", *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1", MARKER: marker, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=75,
    )
    embedded = re.search(r"redis://127\.0\.0\.1:(\d+)/0 \(embedded", result.stdout)
    assert marked_processes(marker, int(embedded.group(1)) if embedded else None) == {}
    return result


def assert_both_flows_completed(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    completed = re.findall(
        r"^\s+\+\d+\.\d{3}s\s+([0-9a-f]{8})\s+connection\.completed\s", result.stdout, re.M
    )
    assert len(set(completed)) == 2, result.stdout
    for kind in ("authorization.started", "callback.received", "selection.required", "selection.submitted"):
        assert kind in result.stdout
    assert "the sandbox lists 3 of the 3 reported credentials as connected" in result.stdout
    # the partner's return page lets each browser in only for its own session's flow
    assert (
        len(re.findall(r"return page\s+flow's reference demo-\w+ is this session's user", result.stdout)) == 2
    )
    assert re.search(r"total \d+\.\d\ds", result.stdout)
    # no okt token, no key
    assert "okt=" not in result.stdout + result.stderr
    assert SECRET_KEY not in result.stdout + result.stderr
    assert "Bearer" not in result.stdout


def test_demo_completes_a_profile_and_a_page_flow_on_a_reachable_redis(redis_server: RedisServer) -> None:
    result = run_demo({"REDIS_URL": redis_server.url, "OKTOPOST_API_KEY": SECRET_KEY})
    assert_both_flows_completed(result)
    assert f"redis {redis_server.url}\n" in result.stdout  # used as it is, nothing embedded


def test_demo_starts_its_own_redis_when_redis_url_does_not_answer() -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    result = run_demo({"REDIS_URL": closed, "CELERY_BROKER_URL": closed})
    assert_both_flows_completed(result)
    assert re.search(
        r"redis redis://127\.0\.0\.1:\d+/0 \(embedded (redis-server|fakeredis), in memory\)", result.stdout
    )
    assert closed not in result.stdout


def test_demo_runs_on_fakeredis_server_when_the_environment_asks_for_it() -> None:
    pytest.importorskip("lupa")
    closed = f"redis://127.0.0.1:{free_port()}/0"
    result = run_demo({"REDIS_URL": closed, "CELERY_BROKER_URL": closed, "OKC_EMBEDDED_REDIS": "fakeredis"})
    assert_both_flows_completed(result)
    assert "(embedded fakeredis, in memory)" in result.stdout


def test_demo_that_runs_out_of_time_fails_with_one_line(redis_server: RedisServer) -> None:
    result = run_demo({"REDIS_URL": redis_server.url}, "--timeout", "0.001")
    assert result.returncode == 1
    [reason] = result.stderr.strip().splitlines()
    assert reason.startswith("oktopost-connect demo: failed: ")
    assert "did not complete in time" in reason
    logs = re.search(r"\(logs: (\S+)\)$", reason)
    assert logs
    assert (Path(logs.group(1)) / "worker.log").exists()
    shutil.rmtree(logs.group(1))


def test_demo_usage_error_is_exit_2() -> None:
    result = run_demo({}, "--timeout", "0")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1


# -- up --------------------------------------------------------------------------------------------------


def marked_processes(marker: str, redis_port: int | None = None) -> dict[int, str]:
    """Every live process whose environment carries our marker, or that is the redis-server on
    `redis_port` (redis-server writes its title over its environment): pid -> command line."""
    needle = f"{MARKER}={marker}".encode()
    redis_title = f"redis-server 127.0.0.1:{redis_port}"
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            if needle in (entry / "environ").read_bytes().split(b"\0") or command == redis_title:
                found[int(entry.name)] = command
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


class Up:
    """`oktopost-connect up` in the background, with a marker in its (and so its children's) environment."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.marker = uuid.uuid4().hex
        self.redis_port: int | None = None
        self.shim_port = free_port()
        command = [*CLI, "up", "--port", str(self.shim_port), "--sandbox-port", str(free_port()), *args]
        self.process = Process(command, env={MARKER: self.marker, **(env or {})}, name="up")

    def wait_ready(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            output = self.process.output
            if "ready (Ctrl-C stops everything)" in output and "api key" in output:
                embedded = re.search(r"redis://127\.0\.0\.1:(\d+)/0 \(embedded", output)
                self.redis_port = int(embedded.group(1)) if embedded else None
                return output
            assert self.process.popen.poll() is None, output
            time.sleep(0.1)
        raise AssertionError(f"up not ready after {timeout}s:\n{self.process.output}")

    def processes(self) -> dict[int, str]:
        """`up` and everything it started that is still alive."""
        return marked_processes(self.marker, self.redis_port)

    def children(self) -> dict[int, str]:
        return {pid: cmd for pid, cmd in self.processes().items() if pid != self.process.popen.pid}

    def wait_exit(self, timeout: float = 20) -> int:
        return self.process.popen.wait(timeout)

    def cleanup(self) -> None:
        """Only when a test failed midway: nothing of ours may outlive the test."""
        self.process.stop(timeout=5)
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def up_runs() -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        up.cleanup()


def survivors(up: Up, seconds: float = 1.0) -> dict[int, str]:
    """What is left of `up` and its children after `seconds` (they have gone by the time `up` exits)."""
    deadline = time.monotonic() + seconds
    left = up.processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = up.processes()
    return left


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_up_stops_every_child_on_a_signal(up_runs: list[Up], signum: signal.Signals) -> None:
    up = Up("--redis", EMBEDDED)
    up_runs.append(up)
    output = up.wait_ready()
    assert re.search(r"api key\s+dev-[A-Za-z0-9_-]{20,}", output)
    assert f"embedded {EMBEDDED}" in output
    children = up.children()
    expected = {"-m cli shim", "-m cli worker", "-m cli sandbox", EMBEDDED_COMMAND}
    kinds = {name for name in expected if any(name in cmd for cmd in children.values())}
    assert kinds == expected, children

    up.process.popen.send_signal(signum)  # what Ctrl-C or `kill` does: only `up` gets it
    assert up.wait_exit() == 0, up.process.output
    assert survivors(up) == {}
    assert f"{signum.name}, stopping" in up.process.output


def test_up_without_oktopost_credentials_runs_the_sandbox_and_points_the_pipeline_at_it(
    up_runs: list[Up], redis_server: RedisServer
) -> None:
    env = {
        "REDIS_URL": redis_server.url,
        "CELERY_BROKER_URL": redis_server.url,
        "CHANNEL_PREFIX": "okc-up-test",
    }
    up = Up(env=env)
    up_runs.append(up)
    output = up.wait_ready()
    assert f"redis      {redis_server.url}\n" in output
    assert "sandbox    http://127.0.0.1:" in output
    import httpx

    key = re.search(r"^  api key\s+(\S+)", output, re.M).group(1)  # type: ignore[union-attr]
    shim = f"http://127.0.0.1:{up.shim_port}"
    created = httpx.post(
        f"{shim}/v1/authorizations", json={"network": "LinkedIn"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert created.status_code == 201, created.text
    sandbox = re.search(r"^  sandbox\s+(\S+)", output, re.M).group(1)  # type: ignore[union-attr]
    assert created.json()["redirect_url"].startswith(f"{sandbox}/oauth/authorize")
    # "ready" means a worker is consuming: its sweeper marked it in Redis before `up` said so
    client: Any = redis_server.client()  # redis-py annotates commands as sync-or-async; this is sync
    consuming = client.zrangebyscore("okc-up-test:workers", time.time() - 5, "+inf")
    assert len(consuming) == 1, consuming
    up.process.popen.send_signal(signal.SIGTERM)
    assert up.wait_exit() == 0
    assert survivors(up) == {}
    assert client.zscore("okc-up-test:workers", consuming[0]) is None  # a stopped worker unmarks itself


def test_up_with_oktopost_credentials_runs_no_sandbox(up_runs: list[Up], redis_server: RedisServer) -> None:
    env = {
        "REDIS_URL": redis_server.url,
        "CELERY_BROKER_URL": redis_server.url,
        "OKTOPOST_API_KEY": SECRET_KEY,
        "SHIM_API_KEYS": "my-own-caller-key-0123456789",
        "CHANNEL_PREFIX": "okc-up-test",
    }
    up = Up(env=env)
    up_runs.append(up)
    output = up.wait_ready()
    assert "sandbox " not in output
    assert "oktopost   https://api.oktopost.com" in output
    assert "my-own-caller-key-0123456789" not in output
    assert SECRET_KEY not in output
    assert "one of SHIM_API_KEYS" in output
    assert not any("-m cli sandbox" in cmd for cmd in up.children().values())
    up.process.popen.send_signal(signal.SIGINT)
    assert up.wait_exit() == 0
    assert survivors(up) == {}


def test_up_stops_the_others_when_a_child_dies(up_runs: list[Up]) -> None:
    up = Up("--redis", EMBEDDED)
    up_runs.append(up)
    up.wait_ready()
    [worker] = [pid for pid, cmd in up.children().items() if "-m cli worker" in cmd]
    os.kill(worker, signal.SIGKILL)
    assert up.wait_exit() == 1
    reasons = [line for line in up.process.output.splitlines() if line.startswith("oktopost-connect up:")]
    assert reasons[-1] == "oktopost-connect up: worker was killed by SIGKILL; stopping the others"
    assert survivors(up) == {}


def test_children_die_with_up_even_when_it_is_killed(up_runs: list[Up]) -> None:
    up = Up("--redis", EMBEDDED)
    up_runs.append(up)
    up.wait_ready()
    assert len(up.children()) == 4
    up.process.popen.send_signal(signal.SIGKILL)  # no cleanup possible: the kernel tells the children
    up.wait_exit()
    assert survivors(up, seconds=10) == {}


def test_up_refuses_a_port_in_use_with_one_line() -> None:
    with busy_port() as port:
        result = subprocess.run(
            [*CLI, "up", "--port", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 2
    assert result.stderr == f"oktopost-connect up: port {port} is in use (choose another with --port)\n"


def test_up_refuses_a_bad_setting_with_one_line_before_starting_anything() -> None:
    marker = uuid.uuid4().hex
    env = {**os.environ, MARKER: marker, "TOKEN_TTL_SECONDS": "soon", "OKC_EMBEDDED_REDIS": EMBEDDED}
    result = subprocess.run(
        [*CLI, "up", "--port", str(free_port())],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("oktopost-connect up: invalid setting TOKEN_TTL_SECONDS: ")
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""
    assert marked_processes(marker) == {}
