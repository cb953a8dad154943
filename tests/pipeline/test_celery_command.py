"""`celery -A worker worker` starts the same worker as `oktopost-connect worker`: the threads pool, our
logging (each task's flow id, no token), gossip and mingle off; and both take the project's queue."""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.flows import callback, consent, events_of, okt_of, start_flow
from tests.support.processes import CLI, Process
from tests.support.stack import RedisServer, Sandbox, start_pipeline, start_redis, stop_redis

pytestmark = pytest.mark.integration

CELERY = str(Path(sys.executable).with_name("celery"))
COMMANDS = {
    "celery -A worker worker": [CELERY, "-A", "worker", "worker"],
    "oktopost-connect worker": [*CLI, "worker"],
}


def pattern_subscriptions(client: redis.Redis) -> int:
    """PSUBSCRIBEs held by every client of this Redis (gossip adds one: the events exchange)."""
    clients: list[dict[str, str]] = client.client_list()  # type: ignore[assignment]
    return sum(int(entry.get("psub", 0)) for entry in clients)


@pytest.fixture(params=list(COMMANDS))
def worker_command(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    stop_redis(server)


def test_both_commands_run_the_same_worker(
    worker_command: str, private_redis: RedisServer, sandbox: Sandbox
) -> None:
    with contextlib.ExitStack() as started:
        pipeline = start_pipeline(private_redis.url, sandbox.url, workers=0, log_level="INFO")
        started.callback(pipeline.stop)
        worker = Process(
            [*COMMANDS[worker_command], "--hostname", f"cmd-{uuid.uuid4().hex[:6]}@%h"],
            env=pipeline.env,
            name="worker",
        )
        started.callback(worker.stop)
        client = pipeline.redis()
        deadline = time.monotonic() + 20
        while not client.zcard(f"{pipeline.prefix}:workers") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.zcard(f"{pipeline.prefix}:workers"), worker.output

        flow = start_flow(pipeline)
        url = consent(flow["redirect_url"])
        token = okt_of(url)
        assert callback(url).status_code == 303
        events = events_of(pipeline, flow["flow_id"])
        assert events[-1]["type"] == "connection.completed"
        assert pattern_subscriptions(client) == 1  # the control box only: no gossip

    output = worker.log_path.read_text(errors="replace")
    assert "concurrency: 8 (thread)" in output
    assert f"{pipeline.prefix}.oktopost-connect" in output  # the queue it consumes
    assert "mingle" not in output
    task_lines = [line for line in output.splitlines() if "oktopost.verify" in line and " INFO " in line]
    assert task_lines, task_lines
    assert all(f"[flow {flow['flow_id']}]" in line for line in task_lines), task_lines
    assert token not in output
