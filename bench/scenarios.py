"""The five scenarios, the targets ours is held to, and how one scenario is measured on one system:
Step 1 and consent first (untimed), then callbacks fired and every flow's ending awaited (timed).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from bench.careless import CarelessClient, blocked_calls
from bench.harness import wait_until_idle
from bench.load import EndingListener, Shot, consent, fire
from bench.report import Row, every_flow_p50, percentile
from bench.systems import System
from bench.upstream import SandboxServer, Upstream
from cli.processes import Child, StartupError

NO_FAULTS: dict[str, Any] = {
    "latency_ms": 0,
    "error_rate": 0,
    "throttle_rate": 0,
    "timeout_rate": 0,
    "drop_rate": 0,
    "malformed_rate": 0,
    "retry_after_s": 1,
}
# 30% of upstream calls fail transiently: 503s, 429s with a 1 s Retry-After, non-JSON 200s, lost answers.
# A 429 speaks for the account, as Oktopost's do: every call is refused until its Retry-After passes.
TRANSIENT_FAULTS = {
    "error_rate": 0.10,
    "throttle_rate": 0.08,
    "retry_after_s": 1,
    "throttle_scope": "account",
    "malformed_rate": 0.06,
    "drop_rate": 0.06,
    "seed": 7,
}
BURST_RATE_LIMIT = "10/second"
CARELESS_RATE = 3.0  # the other client's calls a second: under the limit alone, over it beside a burst
WARM_UP_FLOWS = 3
MIN_RATED = 20  # completions below which a scenario gets no flows/s figure


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    flows: int
    rate: float | None  # callbacks a second, offered; None: all at once
    faults: dict[str, Any]  # the sandbox's faults while timed
    settle: float  # seconds to wait for the last ending after the last callback
    target: str
    met: Callable[[Row], bool]
    upstream: Upstream  # its sandbox; a rate limit there gives ours the same budget
    careless_rate: float | None = None  # calls a second of another client on the account, while timed
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def limited(self) -> bool:
        return self.upstream.rate_limit is not None

    def describe(self) -> dict[str, Any]:
        return {
            "flows": self.flows,
            "offered_rate": self.rate,
            "faults": self.faults,
            "settle_s": self.settle,
            "target": self.target,
            **self.notes,
        }


def _overhead_met(row: Row) -> bool:
    return row.lost == 0 and row.e2e_p50_ms <= 5 and row.e2e_p99_ms <= 20


def _overhead_lost_none(row: Row) -> bool:
    return row.lost == 0 and row.completed == row.flows  # and every delivery (bench/webhooks.py)


def _throughput_met(row: Row) -> bool:
    return row.flows_per_second >= 300 and row.callback_p99_ms <= 10 and row.completed == row.flows


def _faults_met(row: Row) -> bool:
    return row.completed == row.flows


def _burst_met(row: Row) -> bool:
    return row.completed >= 0.95 * (row.optimum or row.flows) and not row.block_tripped


def _shared_met(row: Row) -> bool:
    return row.shared is not None and row.shared.calls_after_first_429 == 0 and row.failed == row.lost == 0


def define_scenarios(quick: bool, burst_token_ttl: int) -> dict[str, Scenario]:
    """Full runs size each scenario to say something; `quick` ones only prove the machinery works."""
    unlimited = Upstream("sandbox", 300)
    limited = Upstream("sandbox-limited", burst_token_ttl, BURST_RATE_LIMIT)
    optimum_note = {"token_ttl_s": burst_token_ttl, "rate_limit": BURST_RATE_LIMIT}
    return {
        "overhead": Scenario(
            "overhead",
            20 if quick else 300,
            20.0 if quick else 25.0,
            {"latency_ms": 0},
            10 if quick else 30,
            "callback-to-terminal p50 <= 5 ms, p99 <= 20 ms (upstream latency 0)",
            _overhead_met,
            unlimited,
        ),
        "throughput": Scenario(
            "throughput",
            200 if quick else 3200,
            200.0 if quick else 320.0,
            {"latency_ms": 100},
            15 if quick else 60,
            ">= 300 flows/s with callback p99 <= 10 ms (upstream latency 100 ms)",
            _throughput_met,
            unlimited,
        ),
        "faults": Scenario(
            "faults",
            30 if quick else 300,
            30.0 if quick else 50.0,
            TRANSIENT_FAULTS,
            15 if quick else 60,
            "100% completed with 30% transient upstream faults",
            _faults_met,
            unlimited,
        ),
        "burst": Scenario(
            "burst",
            20 if quick else 100,
            None,
            {},
            burst_token_ttl + (4 if quick else 40),
            f"completed >= 95% of min(flows, {BURST_RATE_LIMIT} x token TTL {burst_token_ttl} s), "
            "block never tripped",
            _burst_met,
            limited,
            notes=optimum_note,
        ),
        "burst-shared": _burst_shared(quick, burst_token_ttl),
        "webhooks": Scenario(
            "webhooks",
            20 if quick else 300,
            20.0 if quick else 25.0,
            {"latency_ms": 0},
            10 if quick else 30,
            "every event of every flow accepted by both endpoints (ours only; one answers 503 half the time)",
            _overhead_lost_none,
            unlimited,
        ),
    }


def _burst_shared(quick: bool, token_ttl: int) -> Scenario:
    """The burst while another client on the account pushes it over the limit. No client sees the
    other's calls, so a system learns of them from a 429 that has already blocked the account; the most any
    system could complete is then what the other client leaves of the limit, in the part of the
    tokens' lifetime the block leaves."""
    block = 1 if quick else 5
    upstream = Upstream("sandbox-shared", token_ttl, BURST_RATE_LIMIT, block_seconds=block, access_log=True)
    optimum = (
        f"min(flows, ({BURST_RATE_LIMIT} - {CARELESS_RATE:g}/s careless) "
        f"x (token TTL {token_ttl} s - block {block} s))"
    )
    return Scenario(
        "burst-shared",
        20 if quick else 100,
        None,
        {},
        token_ttl + (4 if quick else 40),
        "no call in a block after the system's first 429, no flow failed or lost",
        _shared_met,
        upstream,
        careless_rate=CARELESS_RATE,
        notes={
            "token_ttl_s": token_ttl,
            "rate_limit": BURST_RATE_LIMIT,
            "block_s": block,
            "careless_calls_per_second": CARELESS_RATE,
            "optimum": optimum,
        },
    )


def with_flows(scenario: Scenario, flows: int) -> Scenario:
    return replace(scenario, flows=flows)


async def warm_up(system: System, sandbox: SandboxServer, redis_url: str) -> None:
    """A few flows end to end: proves every process of the system is up and warms its connections."""
    sandbox.reset()
    flows = await system.start_flows(WARM_UP_FLOWS, limited=sandbox.rate_limit is not None)
    shots = await consent(flows)
    async with EndingListener(
        redis_url, system.done_channel, system.ended, {s.flow_id for s in shots}
    ) as ear:
        await fire(shots, None)
        if not await ear.wait(60):
            tails = "\n".join(f"--- {child.name} ---\n{child.tail()}" for child in system.processes)
            raise StartupError(f"{system.name}: warm-up flows did not end within 60 s\n{tails}")


async def measure(
    system: System, scenario: Scenario, sandbox: SandboxServer, redis_url: str, watched: list[Child]
) -> Row:
    """Runs one scenario against one (started, warmed-up) system; `watched` get their CPU time counted."""
    row_idle_wait = wait_until_idle(system.processes, timeout=120)
    sandbox.reset()  # each system starts unblocked, with no faults
    flows = await system.start_flows(scenario.flows, scenario.limited)
    if scenario.limited:
        await asyncio.sleep(1.5)  # let Step 1's calls leave the sandbox's window before the burst
    shots = await consent(flows)  # tokens live from here: the burst fires right after
    sandbox.set_faults(**{**NO_FAULTS, **scenario.faults})
    stats_before = sandbox.stats()
    log_from = sandbox.log_size()
    cpu_before = _cpu(watched)
    careless: contextlib.AbstractAsyncContextManager[object] = contextlib.nullcontext()
    if scenario.careless_rate is not None:
        careless = CarelessClient(sandbox.url, scenario.careless_rate)
    async with (
        EndingListener(redis_url, system.done_channel, system.ended, {s.flow_id for s in shots}) as ear,
        careless,
    ):
        await fire(shots, scenario.rate)
        await ear.wait(scenario.settle)
        endings = ear.endings
    cpu_after = _cpu(watched)
    stats_after = sandbox.stats()
    sandbox.set_faults(**NO_FAULTS)
    row = _row(system, scenario, shots, endings.first, endings.repeated, stats_before, stats_after)
    row.idle_wait_s = round(row_idle_wait, 1)
    row.stages_p50_ms = system.stages({shot.flow_id: shot.sent_wall for shot in shots})
    row.lost_fates = system.fate_of([s.flow_id for s in shots if s.flow_id not in endings.first])
    row.reasons = system.reasons([shot.flow_id for shot in shots])
    row.refusals = dict(Counter(shot.error or f"HTTP {shot.status}" for shot in shots if not shot.accepted))
    row.cpu_seconds = {name: round(cpu_after[name] - cpu_before[name], 3) for name in cpu_before}
    row.optimum = _optimum(scenario, sandbox)
    if scenario.careless_rate is not None:
        row.shared = blocked_calls(sandbox.log_since(log_from))
    row.target = scenario.target
    row.target_met = scenario.met(row)
    return row


def _optimum(scenario: Scenario, sandbox: SandboxServer) -> int | None:
    """A limited scenario's most completions: its calls a second (what another client leaves of them)
    for the tokens' lifetime (less the block that client brings on)."""
    if sandbox.rate is None:
        return None
    rate, seconds = sandbox.rate, sandbox.token_ttl
    if scenario.careless_rate is not None:
        rate, seconds = rate - scenario.careless_rate, seconds - sandbox.upstream.block_seconds
    return min(scenario.flows, max(0, int(rate * seconds)))


def completion_rate(done_at: list[float]) -> float:
    """Completions a second while flows complete steadily: between the 10th and 90th percentile of their
    completion times, so neither the ramp-up nor one late straggler (a retried call) moves the figure.
    Fewer than MIN_RATED completions say nothing of a rate (ten that end together would read as
    tens of thousands a second): no figure then."""
    if len(done_at) < MIN_RATED:
        return math.nan
    ordered = sorted(done_at)
    low, high = (len(ordered) - 1) // 10, len(ordered) - 1 - (len(ordered) - 1) // 10
    span = ordered[high] - ordered[low]
    return (high - low) / span if span > 0 else math.nan


def _cpu(watched: list[Child]) -> dict[str, float]:
    seconds = {child.name: child.cpu_seconds() for child in watched}
    seconds["bench (load generator)"] = time.process_time()
    return seconds


def _row(
    system: System,
    scenario: Scenario,
    shots: list[Shot],
    endings: dict[str, tuple[str, float]],
    repeated: int,
    before: dict[str, Any],
    after: dict[str, Any],
) -> Row:
    outcomes = [outcome for outcome, _ in endings.values()]
    sent = {shot.flow_id: shot.sent for shot in shots}
    done_at = [at for outcome, at in endings.values() if outcome == "completed"]
    e2e = [
        (at - sent[flow_id]) * 1000 for flow_id, (outcome, at) in endings.items() if outcome == "completed"
    ]
    answered = [shot.seconds * 1000 for shot in shots if shot.status]
    first_sent = min(shot.sent for shot in shots) if shots else math.nan
    last_seen = max((at for _, at in endings.values()), default=math.nan)
    completed = outcomes.count("completed")
    return Row(
        scenario=scenario.name,
        system=system.name,
        flows=len(shots),
        completed=completed,
        expired=outcomes.count("expired"),
        failed=outcomes.count("failed"),
        lost=len(shots) - len(endings),
        flows_per_second=completion_rate(done_at),
        callback_p50_ms=percentile(answered, 50),
        callback_p99_ms=percentile(answered, 99),
        e2e_p50_ms=percentile(e2e, 50),
        e2e_p99_ms=percentile(e2e, 99),
        upstream_429s=after["responses_429"]["total"] - before["responses_429"]["total"],
        offered_rate=scenario.rate,
        callbacks_refused=sum(not shot.accepted for shot in shots),
        repeated_endings=repeated,
        upstream_calls=after["v2_calls"] - before["v2_calls"],
        rate_limit_429s=after["responses_429"]["rate_limit"] - before["responses_429"]["rate_limit"],
        block_tripped=after["blocked_count"] > before["blocked_count"] or bool(after["ever_blocked"]),
        seconds=(last_seen - first_sent) if not math.isnan(last_seen) else scenario.settle,
        generator_lag_p99_ms=percentile([(shot.sent - shot.due) * 1000 for shot in shots], 99),
        e2e_p50_every_flow_ms=every_flow_p50(e2e, len(shots)),
    )
