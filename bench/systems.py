"""The systems the benchmark compares, each as real processes: `pipeline` (ours: shim + worker),
`inline` and `naive-celery` (the baselines), and the sandbox they all call. Each system creates flows
(Step 1) its own way and names the Redis channel, and the message on it, that says a flow has ended.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import redis

from bench.completion import DONE_CHANNEL_ENV, QUEUE_ENV_NAME, REDIS_URL_ENV, Completion
from bench.report import percentile
from bench.upstream import SANDBOX_AUTH, SandboxServer
from cli.processes import Child, Children, free_port, wait_for_http
from cli.stack import stack_env
from worker.events import TERMINAL_TYPES
from worker.keys import RedisNames

CALLER_KEY = "bench-caller-key-0123456789"
RETURN_URL = "https://app.example/done"
NETWORK = "LinkedIn"
STEP1_CONCURRENCY = 16
# The webhooks scenario's receivers listen here; every scenario runs ours with these settings, so all
# of them measure the same code. Retries come quickly in the bench (a production schedule waits
# minutes): 16 of them, so that an endpoint failing half the time loses an event once in 130 000.
RECEIVER_HOST = "127.0.0.1"
BENCH_RETRY_SCHEDULE = "100ms,250ms,500ms," + ",".join(["1s"] * 13)
# the webhooks scenario's dead endpoint is disabled this soon; its deliveries are kept this long
BENCH_DISABLE_AFTER_SECONDS = 4
BENCH_RETENTION_SECONDS = 10
# Oktopost's burst limit counts Step 1 too: baselines create at most this many flows a second there
LIMITED_STEP1_PER_SECOND = 9.0
_OUTCOME_OF_EVENT = {
    "connection.completed": "completed",
    "authorization.failed": "failed",
    "authorization.expired": "expired",
}


@dataclass(frozen=True, slots=True)
class Setup:
    """What a system is started with."""

    redis_url: str
    sandbox: SandboxServer
    concurrency: int
    workers: int
    rate_limit: str | None  # ours' OKTOPOST_RATE_LIMIT; None: unlimited
    log_level: str = "WARNING"
    wait_replicas: int = 0  # ours' REDIS_WAIT_REPLICAS (the bench's Redis then has replicas)
    pipeline_env: tuple[tuple[str, str], ...] = ()  # ours' extra settings (python -m bench --pipeline-env)


@dataclass(frozen=True, slots=True)
class StartedFlow:
    flow_id: str
    redirect_url: str


class System(ABC):
    """One system under test; `start()` brings its processes up, `stop()` ends them."""

    name: str

    def __init__(self, children: Children, setup: Setup) -> None:
        self.children = children
        self.setup = setup
        self.processes: list[Child] = []
        self.tag = secrets.token_hex(4)
        self._reasons: dict[str, str] = {}  # flow id -> "outcome:code" for flows not completed

    @property
    @abstractmethod
    def done_channel(self) -> str:
        """The Redis channel on which the end of every flow is published."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def ended(self, message: bytes) -> tuple[str, str] | None:
        """(flow id, outcome) when the message says a flow ended, else None."""

    @abstractmethod
    async def start_flow(self, http: httpx.AsyncClient) -> StartedFlow | float:
        """Step 1 for one flow; a float instead means: refused for now, try again in that many seconds."""

    def stop(self) -> None:
        self.children.stop(self.processes)
        self.processes = []

    def fate_of(self, _flow_ids: list[str]) -> dict[str, int]:
        """Where flows that never ended were left, by state; empty when the system keeps no state."""
        return {}

    def reasons(self, flow_ids: list[str]) -> dict[str, int]:
        """Why flows ended other than completed ("failed:token_invalid": 4), as far as the system says."""
        counted = Counter(self._reasons[flow_id] for flow_id in flow_ids if flow_id in self._reasons)
        return dict(sorted(counted.items()))

    def stages(self, _sent_wall: dict[str, float]) -> dict[str, float]:
        """p50 (ms) of each stage between a callback sent (wall clock) and its flow's end, when known."""
        return {}

    def _oktopost_env(self) -> dict[str, str]:
        return {
            "OKTOPOST_BASE_URL": self.setup.sandbox.url,
            "OKTOPOST_ACCOUNT_ID": SANDBOX_AUTH[0],
            "OKTOPOST_API_KEY": SANDBOX_AUTH[1],
            "LOG_LEVEL": self.setup.log_level,
        }

    async def start_flows(self, count: int, limited: bool) -> list[StartedFlow]:
        """Step 1 for `count` flows, before any timing: paced under the sandbox's limit when `limited`."""
        async with httpx.AsyncClient(timeout=30) as http:
            if not limited:
                return await _bounded(
                    [lambda: self._start_one(http) for _ in range(count)], STEP1_CONCURRENCY
                )
            flows = []
            for _ in range(count):
                started = time.monotonic()
                flows.append(await self._start_one(http))
                await asyncio.sleep(max(0.0, self._step1_spacing() - (time.monotonic() - started)))
            return flows

    def _step1_spacing(self) -> float:
        return 1.0 / LIMITED_STEP1_PER_SECOND

    async def _start_one(self, http: httpx.AsyncClient) -> StartedFlow:
        while True:
            answer = await self.start_flow(http)
            if isinstance(answer, StartedFlow):
                return answer
            await asyncio.sleep(answer)


class Pipeline(System):
    """Ours: the shim and `--workers` Celery workers, as `oktopost-connect shim|worker` processes."""

    name = "pipeline"

    def __init__(self, children: Children, setup: Setup) -> None:
        super().__init__(children, setup)
        self.prefix = f"bench-{self.tag}"
        # wall-clock moments per flow, from the events' `at` and from when the subscriber saw the end
        self._claimed_at: dict[str, float] = {}
        self._ended_at: dict[str, float] = {}
        self._seen_at: dict[str, float] = {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def done_channel(self) -> str:
        return f"{self.prefix}:events"

    def env(self) -> dict[str, str]:
        bench = {
            **self._oktopost_env(),
            "SHIM_API_KEYS": CALLER_KEY,
            "ALLOWED_RETURN_URLS": RETURN_URL,
            "CHANNEL_PREFIX": self.prefix,
            "OKTOPOST_RATE_LIMIT": self.setup.rate_limit or "1000000/second",
            "OKTOPOST_BLOCK_SECONDS": str(self.setup.sandbox.upstream.block_seconds),
            "TOKEN_TTL_SECONDS": str(self.setup.sandbox.token_ttl),
            "WEBHOOK_ALLOWED_HOSTS": RECEIVER_HOST,
            "WEBHOOK_RETRY_SCHEDULE": BENCH_RETRY_SCHEDULE,
            "WEBHOOK_DISABLE_AFTER_SECONDS": str(BENCH_DISABLE_AFTER_SECONDS),
            "WEBHOOK_RETENTION_SECONDS": str(BENCH_RETENTION_SECONDS),
            "REDIS_WAIT_REPLICAS": str(self.setup.wait_replicas),
            **dict(self.setup.pipeline_env),  # --pipeline-env wins
        }
        return stack_env(self.setup.redis_url, self.url, self.setup.sandbox.url, settings=bench)

    def start(self) -> None:
        env = self.env()
        shim = self.children.start_cli("pipeline-shim", ["shim", "--port", str(self.port)], env)
        self.processes.append(shim)
        for index in range(self.setup.workers):
            command = ["worker", "--concurrency", str(self.setup.concurrency)]
            command += ["--hostname", f"bench{index}-{self.tag}@%h"]
            self.processes.append(self.children.start_cli(f"pipeline-worker{index}", command, env))
        wait_for_http(f"{self.url}/readyz", shim)

    def fate_of(self, flow_ids: list[str]) -> dict[str, int]:
        """The state each flow is in, and "stream-ended" for one whose stream holds a terminal event that
        the benchmark's subscriber never received (a gap in the measurement, not in the pipeline)."""
        names = RedisNames(self.prefix)
        fates: Counter[str] = Counter()
        with redis.Redis.from_url(self.setup.redis_url) as client:
            for flow_id in flow_ids:
                last = client.xrevrange(names.flow_stream(flow_id), count=1)
                if last and json.loads(last[0][1][b"event"])["type"] in TERMINAL_TYPES:
                    fates["stream-ended"] += 1
                    continue
                state = client.hget(names.flow_state(flow_id), "state")
                fates[state.decode() if state else "missing"] += 1
        return dict(fates)

    def ended(self, message: bytes) -> tuple[str, str] | None:
        seen = time.time()
        event = json.loads(message)
        if "flow_id" not in event:  # a connection's lifecycle event: it belongs to no flow
            return None
        flow_id = str(event["flow_id"])
        if event.get("type") == "callback.received":
            self._claimed_at[flow_id] = _epoch(event["at"])
        if event.get("type") not in TERMINAL_TYPES:
            return None
        self._ended_at.setdefault(flow_id, _epoch(event["at"]))
        self._seen_at.setdefault(flow_id, seen)
        outcome = _OUTCOME_OF_EVENT[event["type"]]
        if outcome != "completed":
            data = event.get("data") or {}
            self._reasons.setdefault(
                flow_id, f"{outcome}:{data.get('code') or data.get('reason') or data.get('stage') or '?'}"
            )
        return flow_id, outcome

    def stages(self, sent_wall: dict[str, float]) -> dict[str, float]:
        """Callback sent -> claimed by the shim (callback.received's `at`) -> terminal event built in
        the worker (its `at`) -> seen by the subscriber. Event times have millisecond resolution."""
        ended = [
            flow_id for flow_id in sent_wall if flow_id in self._ended_at and flow_id in self._claimed_at
        ]
        spans = {
            "callback_to_claim": [self._claimed_at[f] - sent_wall[f] for f in ended],
            "claim_to_terminal_event": [self._ended_at[f] - self._claimed_at[f] for f in ended],
            "terminal_event_to_subscriber": [self._seen_at[f] - self._ended_at[f] for f in ended],
        }
        return {name: round(percentile(values, 50) * 1000, 2) for name, values in spans.items() if values}

    async def start_flow(self, http: httpx.AsyncClient) -> StartedFlow | float:
        answer = await http.post(
            f"{self.url}/v1/authorizations",
            json={"network": NETWORK, "return_url": RETURN_URL, "reference": "bench"},
            headers={"Authorization": f"Bearer {CALLER_KEY}"},
        )
        if answer.status_code == 503:  # admission control: the upstream budget is taken for now
            return float(answer.headers.get("Retry-After", "1"))
        answer.raise_for_status()
        body = answer.json()
        return StartedFlow(body["flow_id"], body["redirect_url"])

    def _step1_spacing(self) -> float:
        return 0.0  # the shim's admission control paces Step 1 itself


class _Baseline(System):
    """A baseline: its callback app on its own port; Step 1 straight at the sandbox."""

    def __init__(self, children: Children, setup: Setup) -> None:
        super().__init__(children, setup)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def done_channel(self) -> str:
        return f"bench-{self.tag}:done"

    def env(self) -> dict[str, str]:
        return {
            **self._oktopost_env(),
            REDIS_URL_ENV: self.setup.redis_url,
            DONE_CHANNEL_ENV: self.done_channel,
            QUEUE_ENV_NAME: f"naive-{self.tag}",
        }

    def ended(self, message: bytes) -> tuple[str, str] | None:
        completion = Completion.from_json(message)
        if completion is None:
            return None
        if completion.outcome != "completed":
            self._reasons.setdefault(completion.flow_id, f"{completion.outcome}:{completion.reason or '?'}")
        return completion.flow_id, completion.outcome

    async def start_flow(self, http: httpx.AsyncClient) -> StartedFlow | float:
        flow_id = secrets.token_hex(20)
        answer = await http.post(
            f"{self.setup.sandbox.url}/v2/social-authorization",
            data={"network": NETWORK, "url": f"{self.url}/callback/{flow_id}", "type": "profile"},
            auth=SANDBOX_AUTH,
        )
        if answer.status_code == 429:
            return float(answer.headers.get("Retry-After", "1"))
        answer.raise_for_status()
        return StartedFlow(flow_id, answer.json()["RedirectUrl"])


class Inline(_Baseline):
    name = "inline"

    def start(self) -> None:
        app = self.children.start(
            "inline-app", [sys.executable, "-m", "bench.inline", "--port", str(self.port)], self.env()
        )
        self.processes.append(app)
        wait_for_http(f"{self.url}/healthz", app)


class NaiveCelery(_Baseline):
    name = "naive-celery"

    def start(self) -> None:
        module = [sys.executable, "-m", "bench.naive"]
        web = self.children.start("naive-web", [*module, "web", "--port", str(self.port)], self.env())
        self.processes.append(web)
        for index in range(self.setup.workers):
            worker = [*module, "worker", "--concurrency", str(self.setup.concurrency)]
            self.processes.append(self.children.start(f"naive-worker{index}", worker, self.env()))
        wait_for_http(f"{self.url}/healthz", web)


def _epoch(timestamp: str) -> float:
    return datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


SYSTEMS: dict[str, type[System]] = {"pipeline": Pipeline, "inline": Inline, "naive-celery": NaiveCelery}


async def _bounded(jobs: list[Callable[[], Awaitable[StartedFlow]]], limit: int) -> list[StartedFlow]:
    gate = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[StartedFlow]]) -> StartedFlow:
        async with gate:
            return await job()

    return list(await asyncio.gather(*(run(job) for job in jobs)))
