"""Flower as operators run it: it lists the worker and every finished task, only behind Basic auth, and
shows nothing secret: no okt token, no Oktopost API key, no caller key, in its API or its HTML pages."""

from __future__ import annotations

import base64
import contextlib
import html
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.flows import callback, consent, events_of, okt_of, select, start_flow, wait_for_event
from tests.support.processes import Process, free_port, wait_for_http
from tests.support.stack import API_KEY, Pipeline, start_pipeline, start_redis, start_sandbox, stop_redis
from worker.config.flower import flower_refusal

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CELERY = str(Path(sys.executable).with_name("celery"))
FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-pw-5f0c2a"
# A key of our own (the sandbox is started with it), so finding it anywhere means it leaked.
OKTOPOST_KEY = "okc-flower-test-oktopost-key-91d7e3"
REDIS_PASSWORD = "okc-flower-test-redis-pw-2b8e41"


@dataclass
class Flower:
    url: str
    process: Process

    def get(self, path: str, auth: tuple[str, str] | None = (FLOWER_USER, FLOWER_PASSWORD)) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", auth=auth, timeout=15)

    def json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        return response.json()


def start_flower(env: dict[str, str]) -> Flower:
    port = free_port()
    process = Process(
        [
            CELERY,
            "-A",
            "worker",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            f"--basic-auth={FLOWER_USER}:{FLOWER_PASSWORD}",
        ],
        env=env,
        name="flower",
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthcheck", timeout=30)
    except TimeoutError:
        process.stop()
        raise AssertionError(f"Flower did not start:\n{process.output[-3000:]}") from None
    return Flower(f"http://127.0.0.1:{port}", process)


def poll(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    """check() until it returns something truthy; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.3)


@dataclass
class Stack:
    pipeline: Pipeline
    flower: Flower
    worker_name: str


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # A broker of our own: Flower then lists exactly our worker and our tasks, and no other test's
    # worker takes the tasks of this one.
    # It asks for a password, which Flower must not show either (its broker page, the workers' stats).
    # Every process is stopped with the module, and when a later one fails to start.
    with contextlib.ExitStack() as started:
        server = start_redis(["--requirepass", REDIS_PASSWORD])
        if server.directory:
            started.callback(shutil.rmtree, server.directory, ignore_errors=True)
        started.callback(stop_redis, server)
        redis_url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
        sandbox = start_sandbox(env={"OKTOPOST_API_KEY": OKTOPOST_KEY})
        started.callback(sandbox.process.stop)
        pipeline = start_pipeline(redis_url, sandbox.url, oktopost_api_key=OKTOPOST_KEY)
        started.callback(pipeline.stop)
        flower = start_flower(pipeline.env)
        started.callback(flower.process.stop)
        # Flower has its event receiver running once it has seen our worker's heartbeat: only then do
        # the flows start, so it misses none of their task events (Redis pub/sub keeps no history).
        status: dict[str, bool] = poll(
            "Flower sees the worker's heartbeat",
            lambda: {name: alive for name, alive in flower.json("/api/workers?status=1").items() if alive},
        )
        assert len(status) == 1, status
        yield Stack(pipeline, flower, next(iter(status)))


@dataclass
class Flows:
    profile: str
    page: str
    tokens: list[str]


@pytest.fixture(scope="module")
def flows(stack: Stack) -> Flows:
    """A profile flow and a page flow, run to connection.completed through the real pipeline."""
    pipeline = stack.pipeline
    profile = start_flow(pipeline, network="LinkedIn")
    profile_callback = consent(profile["redirect_url"])
    assert callback(profile_callback).status_code == 303

    page = start_flow(pipeline, network="Facebook", entity_type="page")
    page_callback = consent(page["redirect_url"])
    assert callback(page_callback).status_code == 303
    offer = wait_for_event(pipeline, page["flow_id"], "selection.required")
    assert select(pipeline, page["flow_id"], [offer["data"]["entities"][1]["id"]]).status_code == 202

    for flow_id in (profile["flow_id"], page["flow_id"]):
        assert events_of(pipeline, flow_id)[-1]["type"] == "connection.completed"
    return Flows(profile["flow_id"], page["flow_id"], [okt_of(profile_callback), okt_of(page_callback)])


def finished_tasks(flower: Flower, expected: set[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Flower's tasks once it lists every (name, flow id) of `expected` as SUCCESS."""

    def check() -> dict[str, dict[str, Any]] | None:
        tasks: dict[str, dict[str, Any]] = flower.json("/api/tasks")
        done = {(t["name"], t["args"]) for t in tasks.values() if t["state"] == "SUCCESS"}
        return tasks if {(name, repr([flow_id])) for name, flow_id in expected} <= done else None

    tasks: dict[str, dict[str, Any]] = poll(f"Flower lists {sorted(expected)} as finished", check)
    return tasks


def listed_workers(flower: Flower) -> dict[str, Any]:
    """/api/workers?refresh=1 once the worker has answered Flower's inspect (it waits 1 s for replies)."""
    workers: dict[str, Any] = poll(
        "Flower's inspect gets the worker's answers",
        lambda: (
            (found := flower.json("/api/workers?refresh=1"))
            and all("stats" in w for w in found.values())
            and found
        ),
    )
    return workers


def test_flower_lists_the_worker(stack: Stack) -> None:
    workers = listed_workers(stack.flower)
    assert list(workers) == [stack.worker_name]
    registered = set(workers[stack.worker_name]["registered"])
    assert {"oktopost.verify", "oktopost.complete"} <= registered


def test_flower_lists_the_finished_tasks_with_a_flow_id_as_only_argument(stack: Stack, flows: Flows) -> None:
    expected = {
        ("oktopost.verify", flows.profile),
        ("oktopost.verify", flows.page),
        ("oktopost.complete", flows.page),
    }
    tasks = finished_tasks(stack.flower, expected)
    ours = [t for t in tasks.values() if t["args"] in (repr([flows.profile]), repr([flows.page]))]
    assert {(t["name"], t["args"]) for t in ours} == {(name, repr([fid])) for name, fid in expected}
    for task in ours:
        assert task["kwargs"] == "{}", task
        assert task["worker"] == stack.worker_name, task
        assert task["received"], task
        assert task["started"], task
        assert task["succeeded"], task
        # the task-sent event, which the shim's claim (or selection) step publishes with the task
        assert task["sent"], task
        assert task["sent"] <= task["received"], task

    # One task read on its own, by the API and by its HTML page.
    task_id = next(t["uuid"] for t in ours if t["name"] == "oktopost.complete")
    info = stack.flower.json(f"/api/task/info/{task_id}")
    assert info["args"] == repr([flows.page])
    assert info["state"] == "SUCCESS"
    page = stack.flower.get(f"/task/{task_id}")
    assert page.status_code == 200
    assert flows.page in page.text
    assert "oktopost.complete" in page.text


@pytest.mark.parametrize("path", ["/api/tasks", "/api/workers", "/", "/tasks", "/broker"])
def test_flower_refuses_requests_without_basic_auth(stack: Stack, path: str) -> None:
    assert stack.flower.get(path, auth=None).status_code == 401
    assert stack.flower.get(path, auth=(FLOWER_USER, "wrong")).status_code == 401
    assert stack.flower.get(path, auth=("admin", FLOWER_PASSWORD)).status_code == 401


def test_flower_shows_no_token_or_key(stack: Stack, flows: Flows) -> None:
    flower = stack.flower
    tasks = finished_tasks(
        flower,
        {
            ("oktopost.verify", flows.profile),
            ("oktopost.verify", flows.page),
            ("oktopost.complete", flows.page),
        },
    )
    listed_workers(flower)  # so the pages below show the worker's stats and configuration
    basic = base64.b64encode(f"demo-account:{OKTOPOST_KEY}".encode()).decode()
    secrets = {
        "okt token": flows.tokens,
        "Oktopost API key": [OKTOPOST_KEY, basic],
        "shim caller key": [API_KEY],
        "Redis password": [REDIS_PASSWORD],
    }
    assert all(len(token) >= 16 for token in flows.tokens), flows.tokens

    pages = {
        "/api/tasks": flower.get("/api/tasks"),
        "/api/workers": flower.get("/api/workers"),
        "/tasks": flower.get("/tasks"),
        "/workers": flower.get("/workers"),
        f"/worker/{stack.worker_name}": flower.get(f"/worker/{stack.worker_name}"),
        "/broker": flower.get("/broker"),
    }
    for task_id in tasks:
        pages[f"/api/task/info/{task_id}"] = flower.get(f"/api/task/info/{task_id}")
        pages[f"/task/{task_id}"] = flower.get(f"/task/{task_id}")
    assert len(pages) >= 6 + 2 * 3

    # The pages do show the flows (so the search below looks at the right text), never a secret.
    assert flows.profile in pages["/api/tasks"].text
    assert flows.page in pages["/api/tasks"].text
    assert all(
        flows.page in pages[f"/task/{tid}"].text or flows.profile in pages[f"/task/{tid}"].text
        for tid in tasks
    )
    for path, response in pages.items():
        assert response.status_code == 200, (path, response.status_code)
        text = html.unescape(response.text)
        for kind, values in secrets.items():
            for value in values:
                assert value not in text, f"{kind} shown by Flower at {path}"


def _flower_exits(
    *flags: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str] | None:
    """Flower started with these flags and environment (in `cwd`); its outcome, or None when it kept
    running."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    environ |= {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "SHIM_API_KEYS": API_KEY, **env}
    argv = [CELERY, "-A", "worker", "flower", f"--port={free_port()}", *flags]
    try:
        return subprocess.run(
            argv, env=environ, capture_output=True, text=True, timeout=6, check=False, cwd=cwd
        )
    except subprocess.TimeoutExpired:  # run() killed it: it had started
        return None


def test_flower_without_authentication_off_loopback_refuses_to_start() -> None:
    refused = _flower_exits()  # Flower's default address: every interface
    assert refused is not None, "Flower started unauthenticated on every interface"
    assert refused.returncode == 2
    assert "without authentication" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_flower_without_authentication_starts_on_loopback() -> None:
    assert _flower_exits("--address=127.0.0.1") is None


@pytest.mark.parametrize(
    "setting", ["FLOWER_BASIC_AUTH=ops:env-file-password-1234", "FLOWER_ADDRESS=127.0.0.1"]
)
def test_flower_options_in_the_env_file_which_flower_does_not_apply_do_not_let_it_start(
    tmp_path: Path, setting: str
) -> None:
    """Flower reads its FLOWER_* variables before `.env` is read: a password or a loopback address set
    there would not be applied, and Flower would serve every interface unauthenticated."""
    (tmp_path / ".env").write_text(setting + "\n")
    refused = _flower_exits(cwd=tmp_path)
    assert refused is not None, "Flower started unauthenticated on every interface"
    assert refused.returncode == 2
    assert "Flower does not read .env" in refused.stderr
    assert setting.split("=")[0] in refused.stderr
    assert "env-file-password" not in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("argv", "env", "refused"),
    [
        (["celery", "-A", "worker", "flower"], {}, True),
        (["celery", "-A", "worker", "flower", "--address", "10.0.0.5"], {}, True),
        (["celery", "-A", "worker", "flower"], {"FLOWER_ADDRESS": "::1"}, False),
        (["celery", "-A", "worker", "flower", "--basic-auth=ops:pw-1234"], {}, False),
        (["celery", "-A", "worker", "flower"], {"FLOWER_BASIC_AUTH": "ops:pw-1234"}, False),
        (["celery", "-A", "worker", "flower"], {"FLOWER_AUTH": ".*@example.com"}, False),
        (["celery", "-A", "worker", "worker"], {}, False),
    ],
)
def test_which_flower_start_is_refused(argv: list[str], env: dict[str, str], refused: bool) -> None:
    assert (flower_refusal(argv, env) is not None) is refused
