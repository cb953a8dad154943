"""The `rolling` scenario (ours only): a rolling restart of three workers under a steady 50 callbacks a
second, against the same load without one.

Each worker in turn gets SIGTERM (it hands back the flows it holds and exits), and a new one is started
in its place and waited for before the next is stopped, as an orchestrator's rolling update does. The
target: no flow lost or expired, none with two endings, and callback-to-terminal p99 within 2x the
steady run's.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from dataclasses import dataclass, field

import redis

from bench.load import EndingListener, Shot, consent, fire
from bench.report import percentile
from bench.scenarios import warm_up
from bench.systems import Pipeline, Setup
from bench.upstream import Upstream, start_sandbox
from cli.processes import Child, Children, StartupError
from worker.keys import RedisNames

ROLLING = "rolling"
WORKERS = 3
RATE = 50.0  # callbacks a second, offered
TOKEN_TTL = 300
SETTLE_SECONDS = 60.0
READY_SECONDS = 60.0  # a new worker marks itself consuming within this, or the restart fails
TARGET = "rolling restart of 3 workers: nothing lost or expired, callback-to-terminal p99 <= 2x steady"


@dataclass
class Phase:
    flows: int
    completed: int
    expired: int
    failed: int
    lost: int
    repeated: int
    e2e_p50_ms: float
    e2e_p99_ms: float


@dataclass
class Restart:
    worker: str
    exit_code: int | None
    stopped_in_s: float
    ready_in_s: float


@dataclass
class RollingResult:
    flows: int
    steady: Phase
    rolling: Phase
    restarts: list[Restart] = field(default_factory=list)

    @property
    def p99_ratio(self) -> float:
        return self.rolling.e2e_p99_ms / self.steady.e2e_p99_ms if self.steady.e2e_p99_ms else math.nan

    @property
    def met(self) -> bool:
        rolling = self.rolling
        clean = rolling.lost == rolling.expired == rolling.failed == rolling.repeated == 0
        exits = all(restart.exit_code == 0 for restart in self.restarts) and len(self.restarts) == WORKERS
        return clean and exits and self.p99_ratio <= 2.0

    def report(self) -> str:
        lines = [f"rolling ({self.flows} flows a phase at {RATE:g} callbacks/s, {WORKERS} workers)"]
        for name, phase in (("steady", self.steady), ("rolling", self.rolling)):
            lines.append(
                f"  {name:<8} done {phase.completed}  expired {phase.expired}  failed {phase.failed}  "
                f"lost {phase.lost}  repeated {phase.repeated}  "
                f"e2e p50 {phase.e2e_p50_ms:.1f} ms  p99 {phase.e2e_p99_ms:.1f} ms"
            )
        for restart in self.restarts:
            lines.append(
                f"  restart {restart.worker}: exit {restart.exit_code} in {restart.stopped_in_s:.2f} s, "
                f"its successor consuming {restart.ready_in_s:.1f} s later"
            )
        verdict = "met" if self.met else "MISSED"
        lines.append(f"  p99 rolling / steady: {self.p99_ratio:.2f}x   target: {TARGET}: {verdict}")
        return "\n".join(lines)

    def as_json(self) -> dict[str, object]:
        return {
            "flows": self.flows,
            "steady": vars(self.steady),
            "rolling": vars(self.rolling),
            "restarts": [vars(restart) for restart in self.restarts],
            "p99_ratio": self.p99_ratio,
            "target": TARGET,
            "target_met": self.met,
        }


def run_rolling(
    children: Children, redis_url: str, concurrency: int, quick: bool, flows: int | None = None
) -> RollingResult:
    """Starts a sandbox and ours with three workers, runs the steady phase then the rolling one
    (`flows` each; by default enough for the restarts to happen under load)."""
    flows = flows or (200 if quick else 1200)
    sandbox = start_sandbox(children, Upstream("sandbox-rolling", TOKEN_TTL))
    system = Pipeline(children, Setup(redis_url, sandbox, concurrency, WORKERS, None))
    try:
        system.start()
        asyncio.run(warm_up(system, sandbox, redis_url))
        steady, _ = asyncio.run(_phase(system, redis_url, flows, rolling=False))
        rolling, restarts = asyncio.run(_phase(system, redis_url, flows, rolling=True))
    finally:
        system.stop()
        children.stop([sandbox.child])
    return RollingResult(flows, steady, rolling, restarts)


async def _phase(system: Pipeline, redis_url: str, flows: int, rolling: bool) -> tuple[Phase, list[Restart]]:
    started = await system.start_flows(flows, limited=False)
    shots = await consent(started)
    restarts: list[Restart] = []
    expected = {shot.flow_id for shot in shots}
    async with EndingListener(redis_url, system.done_channel, system.ended, expected) as ear:
        roll = asyncio.create_task(asyncio.to_thread(_restart_each, system, restarts)) if rolling else None
        await fire(shots, RATE)
        if roll is not None:
            await roll
        await ear.wait(SETTLE_SECONDS)
        endings = ear.endings
    return _tally(shots, endings.first, endings.repeated), restarts


def _tally(shots: list[Shot], first: dict[str, tuple[str, float]], repeated: int) -> Phase:
    sent = {shot.flow_id: shot.sent for shot in shots}
    outcomes = [outcome for outcome, _ in first.values()]
    e2e = [(at - sent[flow_id]) * 1000 for flow_id, (outcome, at) in first.items() if outcome == "completed"]
    return Phase(
        flows=len(shots),
        completed=outcomes.count("completed"),
        expired=outcomes.count("expired"),
        failed=outcomes.count("failed"),
        lost=len(shots) - len(first),
        repeated=repeated,
        e2e_p50_ms=percentile(e2e, 50),
        e2e_p99_ms=percentile(e2e, 99),
    )


def _restart_each(system: Pipeline, restarts: list[Restart]) -> None:
    """Each worker in turn: SIGTERM, its exit awaited, a new one started and awaited (a thread's work,
    beside the load)."""
    time.sleep(1.0)  # the load is under way
    workers = [child for child in system.processes if child.name.startswith("pipeline-worker")]
    for index, worker in enumerate(workers):
        began = time.monotonic()
        os.kill(worker.pid, signal.SIGTERM)
        code = worker.popen.wait(timeout=30)
        stopped_in = time.monotonic() - began
        system.processes.remove(worker)
        successor, node = _start_worker(system, index)
        ready_in = _until_consuming(system, successor, node)
        restarts.append(Restart(worker.name, code, round(stopped_in, 2), round(ready_in, 1)))


def _start_worker(system: Pipeline, index: int) -> tuple[Child, str]:
    """A worker in place of the index-th, and its Celery node name's first part."""
    node = f"roll{index}-{system.tag}"
    command = ["worker", "--concurrency", str(system.setup.concurrency), "--hostname", f"{node}@%h"]
    child = system.children.start_cli(f"pipeline-worker{index}-next", command, system.env())
    system.processes.append(child)
    return child, node


def _until_consuming(system: Pipeline, worker: Child, node: str) -> float:
    """Seconds until the new worker's sweeper marks it consuming in Redis."""
    began = time.monotonic()
    name, hostname = worker.name, f"{node}@"
    with redis.Redis.from_url(system.setup.redis_url) as client:
        while time.monotonic() - began < READY_SECONDS:
            if worker.exited():
                raise StartupError(f"{name} exited while starting:\n{worker.tail()}")
            marks = client.zrange(RedisNames(system.prefix).workers, 0, -1)
            if any(mark.decode().startswith(hostname) for mark in marks):
                return time.monotonic() - began
            time.sleep(0.1)
    raise StartupError(f"{name} was not consuming after {READY_SECONDS:g} s:\n{worker.tail()}")
