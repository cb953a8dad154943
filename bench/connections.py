"""The `connections` scenario: the burst beside health checks of many connections on the same account.

Ours only (the baselines keep no connections). Twice, each time on fresh processes (a sandbox with the
burst scenario's rate limit, ours): with checks off, then checking the account's connections every
second. Each time the account holds CONNECTIONS connections (seeded in the sandbox and made in Redis as
flows' completions make them), and a burst of flows is called back all at once. Reported: the burst's
completions against its optimum (the account's calls a second for a token's life) in both runs (target:
equal), the calls the checks made meanwhile against their share, the checks' mean time, and 429s.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from bench.load import EndingListener, consent, fire
from bench.scenarios import warm_up
from bench.systems import Pipeline, Setup
from bench.upstream import SandboxServer, Upstream, start_sandbox
from cli.processes import Children
from worker.connections.checks import CheckOutcome, check_field, check_seconds_field
from worker.events import ConnectedCredential
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames

RATE_LIMIT = "10/second"
SHARE = 0.1
ACCOUNT = "demo-account"  # the sandbox's, and ours' default
TARGET = "burst completions with checks = without (both >= 95% of optimum), checks within their share, no 429"


@dataclass(frozen=True, slots=True)
class ConnectionsLoad:
    connections: int
    burst: int
    token_ttl: int

    @property
    def optimum(self) -> int:
        return min(self.burst, int(10 * self.token_ttl))


def load_for(quick: bool) -> ConnectionsLoad:
    if quick:
        return ConnectionsLoad(connections=200, burst=30, token_ttl=3)
    return ConnectionsLoad(connections=1000, burst=100, token_ttl=8)


@dataclass
class Run:
    checks: bool
    completed: int = 0
    expired: int = 0
    lost: int = 0
    throttled: int = 0
    seconds: float = 0.0
    check_calls: int = 0  # calls the checks made during the burst
    checks_ok: int = 0  # checks of every connection that succeeded in the run (the burst's included)
    check_mean_ms: float | None = None  # their mean time, from lock to last change
    reasons: dict[str, int] = field(default_factory=dict)  # endings other than completed, by outcome:code


@dataclass
class ConnectionsResult:
    load: ConnectionsLoad
    without: Run
    beside: Run

    @property
    def met(self) -> bool:
        floor = 0.95 * self.load.optimum
        share_cap = SHARE * 10 * self.beside.seconds + 1
        return (
            self.without.completed >= floor
            and self.beside.completed >= floor
            and self.beside.check_calls <= share_cap
            and self.without.throttled == self.beside.throttled == 0
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "connections": self.load.connections,
            "burst_flows": self.load.burst,
            "burst_optimum": self.load.optimum,
            "rate_limit": RATE_LIMIT,
            "token_ttl_s": self.load.token_ttl,
            "check_share": SHARE,
            "without_checks": vars(self.without),
            "beside_checks": vars(self.beside),
            "target": TARGET,
            "met": self.met,
        }

    def report(self) -> str:
        lines = [
            f"connections: {self.load.connections} connections on one account ({RATE_LIMIT}), a burst of "
            f"{self.load.burst} flows (optimum {self.load.optimum}), checks every second (share {SHARE})",
            "  run              completed  expired  lost  429s  seconds  check calls  checks  check mean ms",
            "  (check calls: during the burst; checks: whole checks of every connection done in the run)",
        ]
        for name, run in (("without checks", self.without), ("beside checks", self.beside)):
            mean = "-" if run.check_mean_ms is None else f"{run.check_mean_ms:.0f}"
            lines.append(
                f"  {name:<16} {run.completed:>9}  {run.expired:>7}  {run.lost:>4}  {run.throttled:>4}"
                f"  {run.seconds:>7.1f}  {run.check_calls:>11}  {run.checks_ok:>6}  {mean:>13}"
            )
        lines.append(f"  target: {TARGET}: {'met' if self.met else 'NOT met'}")
        return "\n".join(lines)


class CheckingPipeline(Pipeline):
    """Ours, checking connections every `check_seconds` (0: not at all)."""

    def __init__(self, children: Children, setup: Setup, check_seconds: int) -> None:
        super().__init__(children, setup)
        self.check_seconds = check_seconds

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "CONNECTION_CHECK_SECONDS": str(self.check_seconds),
            "CONNECTION_CHECK_SHARE": str(SHARE),
        }


def run_connections(
    children: Children, redis_url: str, workers: int, concurrency: int, quick: bool
) -> ConnectionsResult:
    load = load_for(quick)
    without = _run(children, redis_url, workers, concurrency, load, checks=False)
    beside = _run(children, redis_url, workers, concurrency, load, checks=True)
    return ConnectionsResult(load, without, beside)


def _run(
    children: Children, redis_url: str, workers: int, concurrency: int, load: ConnectionsLoad, *, checks: bool
) -> Run:
    """One run on fresh processes, the sandbox's included (a second run on the same sandbox is slower,
    whatever it runs: the comparison would measure the order)."""
    sandbox = start_sandbox(children, Upstream("sandbox-connections", load.token_ttl, RATE_LIMIT, 5))
    setup = Setup(redis_url, sandbox, concurrency, workers, RATE_LIMIT)
    system = CheckingPipeline(children, setup, 1 if checks else 0)
    try:
        system.start()
        asyncio.run(warm_up(system, setup.sandbox, setup.redis_url))
        _seed(setup.sandbox, setup.redis_url, system.prefix, load.connections)
        seeded = _check_figures(system)
        time.sleep(2.5 if checks else 0.5)  # checks under way before the burst
        run = asyncio.run(_burst(system, setup.sandbox, load, checks))
        if checks:  # a check after the burst too: every connection's check needs its pages' calls
            deadline = time.monotonic() + 60
            while _check_figures(system)[1] < 2 + seeded[1] and time.monotonic() < deadline:
                time.sleep(0.5)
        _, ok, seconds = (
            after - before for after, before in zip(_check_figures(system), seeded, strict=True)
        )
        run.checks_ok = int(ok)
        run.check_mean_ms = round(seconds / ok * 1000, 1) if ok else None
        return run
    finally:
        system.stop()
        children.stop([sandbox.child])


def _seed(sandbox: SandboxServer, redis_url: str, prefix: str, count: int) -> None:
    """`count` profiles connected at the sandbox, each made a connection as its flow's completion would."""
    answer = httpx.post(f"{sandbox.url}/_sandbox/credentials", json={"count": count}, timeout=30)
    answer.raise_for_status()
    client = redis.Redis.from_url(redis_url)
    store = FlowStore(client, RedisNames(prefix), Lifetimes())
    for index, credential_id in enumerate(answer.json()["Ids"]):
        flow_id = f"seed{index:036d}"
        flow = store.create(flow_id, "LinkedIn", "profile", f"user-{index}", None)
        store.claim_callback(flow, f"seed-token-{index:08d}")
        store.take_work(flow_id, "seed", FlowState.VERIFYING)
        taken = store.get(flow_id)
        assert taken is not None
        made = ConnectedCredential(id=credential_id, name="Seeded", status="valid", network="LinkedIn")
        store.complete(taken, [made], "seed")
    client.close()


async def _burst(system: Pipeline, sandbox: SandboxServer, load: ConnectionsLoad, checks: bool) -> Run:
    run = Run(checks)
    flows = await system.start_flows(load.burst, limited=True)
    await asyncio.sleep(1.5)  # Step 1's calls leave the window before the burst
    shots = await consent(flows)
    stats_before = sandbox.stats()
    metrics_before = _check_figures(system)
    started = time.monotonic()
    expected = {shot.flow_id for shot in shots}
    async with EndingListener(system.setup.redis_url, system.done_channel, system.ended, expected) as ear:
        await fire(shots, None)
        await ear.wait(load.token_ttl + 10)
        endings = ear.endings
    run.seconds = round(time.monotonic() - started, 1)
    outcomes = [endings.first.get(flow_id, ("lost", 0.0))[0] for flow_id in expected]
    run.completed, run.expired = outcomes.count("completed"), outcomes.count("expired")
    run.lost = outcomes.count("lost")
    run.reasons = system.reasons(sorted(expected))
    run.throttled = sandbox.stats()["throttled"] - stats_before["throttled"]
    calls, ok, seconds = (
        after - before for after, before in zip(_check_figures(system), metrics_before, strict=True)
    )
    run.check_calls, run.checks_ok = int(calls), int(ok)
    run.check_mean_ms = round(seconds / ok * 1000, 1) if ok else None
    return run


def _check_figures(system: Pipeline) -> tuple[float, float, float]:
    """The checks' calls today, successful checks, and their seconds in all, as Redis counts them."""
    names = RedisNames(system.prefix)
    day = int(time.time() // 86400)
    with redis.Redis.from_url(system.setup.redis_url) as client:
        calls = float(client.get(names.account(ACCOUNT).check_daily_calls(day)) or 0)
        ok = float(client.hget(names.worker_metrics, check_field(ACCOUNT, CheckOutcome.OK)) or 0)
        seconds = float(client.hget(names.worker_metrics, check_seconds_field(ACCOUNT)) or 0)
    return calls, ok, seconds
