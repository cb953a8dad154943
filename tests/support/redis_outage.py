"""Redis going away under a running pipeline: a redis-server with AOF that stops and starts again on the
same port and data, and the shim's answers meanwhile, each one timed."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx

from tests.support.stack import Pipeline, RedisServer, start_redis, stop_redis


class RestartableRedis:
    """A redis-server with AOF (`aof`: its flags) in a directory of its own, restarted on the same port."""

    def __init__(self, aof: list[str]) -> None:
        self.aof = aof
        self.directory = tempfile.mkdtemp(prefix="okc-aof-")
        self.server: RedisServer = start_redis(aof, directory=self.directory)
        self.restarts = 0

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        stop_redis(self.server)  # SIGTERM: Redis writes what the AOF still holds, then exits

    def start(self) -> None:
        self.server = start_redis(self.aof, port=self.server.port, directory=self.directory)
        self.restarts += 1


class ShimRequest(NamedTuple):
    method: str
    path: str
    json: Any = None  # the body, if any
    as_caller: bool = False  # with the caller's API key


@dataclass(frozen=True)
class TimedAnswer:
    status: int
    seconds: float
    response: httpx.Response

    def __repr__(self) -> str:
        return f"({self.status}, {self.seconds:.2f} s, {self.response.text[:300]!r})"

    @property
    def body(self) -> Any:
        """The JSON body; None when the answer is not JSON."""
        is_json = self.response.headers.get("content-type") == "application/json"
        return self.response.json() if is_json else None


def timed_answers(
    pipeline: Pipeline, requests: dict[str, ShimRequest], timeout: float
) -> dict[str, TimedAnswer]:
    """Sends each request to the shim in turn, timing how long its answer takes."""
    answers: dict[str, TimedAnswer] = {}
    with httpx.Client(base_url=pipeline.shim_url, timeout=timeout) as client:
        for name, request in requests.items():
            started = time.monotonic()
            headers = pipeline.headers if request.as_caller else {}
            answer = client.request(request.method, request.path, headers=headers, json=request.json)
            answers[name] = TimedAnswer(answer.status_code, time.monotonic() - started, answer)
    return answers
