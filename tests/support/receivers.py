"""A webhook receiver process (bench/receiver.py: it verifies every delivery with the Standard Webhooks
library and records what it accepted), the stack the webhook tests start around it (`webhook_stack`),
and what they do with it."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from tests.support.flows import callback, consent, start_flow
from tests.support.processes import Process, free_port, wait_for_port
from tests.support.stack import Pipeline, start_pipeline


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.process = Process(
            [sys.executable, "-m", "bench.receiver", "--port", str(self.port)], name="receiver"
        )
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            wait_for_port(self.port, self.process)
        except BaseException:
            self.process.stop()
            raise

    def control(self, path: str, **settings: Any) -> None:
        httpx.post(f"{self.url}/_control", json={"path": path, **settings}).raise_for_status()

    def report(self, path: str) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/_received", params={"path": path}).json()
        return answer


@contextlib.contextmanager
def webhook_stack(
    redis_url: str,
    sandbox_url: str,
    workers: int = 0,
    webhook_allowed_hosts: str = "127.0.0.1",
    webhook_timeout_seconds: float = 1,
    **settings: Any,
) -> Iterator[tuple[Pipeline, Receiver]]:
    """A receiver, and a shim with `workers` workers of 8 threads whose webhooks may call it; every
    process stopped on leaving, and when one fails to start."""
    with contextlib.ExitStack() as started:
        receiver = Receiver()
        started.callback(receiver.process.stop)
        pipeline = start_pipeline(
            redis_url,
            sandbox_url,
            workers=0,
            webhook_allowed_hosts=webhook_allowed_hosts,
            webhook_timeout_seconds=webhook_timeout_seconds,
            **settings,
        )
        started.callback(pipeline.stop)
        for _ in range(workers):
            pipeline.start_worker(concurrency=8)
        yield pipeline, receiver


def register(pipeline: Pipeline, receiver: Receiver, path: str, events: list[str] | None = None) -> str:
    body: dict[str, Any] = {"url": f"{receiver.url}{path}"}
    if events is not None:
        body["events"] = events
    answer = httpx.post(f"{pipeline.shim_url}/v1/webhooks", json=body, headers=pipeline.headers)
    assert answer.status_code == 201, answer.text
    created = answer.json()
    receiver.control(path, secret=created["secret"])
    return str(created["id"])


def run_flows(pipeline: Pipeline, count: int) -> list[str]:
    flows = []
    for _ in range(count):
        created = start_flow(pipeline, ui="redirect")
        assert callback(consent(created["redirect_url"])).status_code == 303
        flows.append(created["flow_id"])
    return flows


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def accepted(receiver: Receiver, path: str) -> dict[str, str]:
    return {item["id"]: item["body"] for item in receiver.report(path)["accepted"]}
