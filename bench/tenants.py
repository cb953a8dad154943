"""The `tenants` scenario: many Oktopost accounts in one deployment, one of them bursting.

Ours only (the baselines have one account). A sandbox serves ACCOUNTS accounts, each with its own rate
limit and block; a tenants file gives each account a tenant with its own caller key. Twice, on the same
processes: first the quiet load alone (every quiet account's users coming back steadily), then the same
quiet load beside one account's burst (all its callbacks at once, far more than its budget serves in a
token's life). Reported: each account's completions against the most its budget allows, the quiet
accounts' callback-to-terminal p99 beside the same figure on the idle system, and the blocks.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.load import EndingListener, Shot, consent, fire
from bench.report import percentile
from bench.systems import Pipeline, Setup, StartedFlow
from bench.upstream import SandboxServer, Upstream
from cli.processes import Child, Children, StartupError, free_port, wait_for_port

RATE_LIMIT = "5/second"  # each account's; the sandbox blocks an account past it, as Oktopost does
BURSTING = 0  # the index of the bursting account
STEP1_CONCURRENCY = 32


@dataclass(frozen=True, slots=True)
class TenantsLoad:
    accounts: int
    token_ttl: int
    burst: int  # the bursting account's flows, called back all at once
    quiet_rate: float  # callbacks a second on each quiet account
    quiet_seconds: float  # how long the quiet load lasts

    @property
    def quiet_flows(self) -> int:
        return max(1, round(self.quiet_rate * self.quiet_seconds))

    @property
    def rate(self) -> float:
        calls, unit = RATE_LIMIT.split("/")
        return int(calls) / {"second": 1, "minute": 60}[unit]

    @property
    def burst_optimum(self) -> int:
        """The most of the burst any system completes: the account's calls a second for a token's life."""
        return min(self.burst, int(self.rate * self.token_ttl))


def load_for(quick: bool) -> TenantsLoad:
    if quick:
        return TenantsLoad(accounts=5, token_ttl=4, burst=30, quiet_rate=1.0, quiet_seconds=3)
    return TenantsLoad(accounts=50, token_ttl=8, burst=100, quiet_rate=1.0, quiet_seconds=8)


@dataclass
class Phase:
    """One timed run: the quiet accounts' figures, and the bursting account's when it burst."""

    name: str
    quiet_flows: int = 0
    quiet_completed: int = 0
    quiet_e2e_p50_ms: float = math.nan
    quiet_e2e_p99_ms: float = math.nan
    quiet_short: dict[str, int] = field(default_factory=dict)  # quiet accounts that completed fewer
    # the slowest quiet flow called back in each second of the timed part: where a slow one came
    quiet_e2e_max_ms_by_second: list[float] = field(default_factory=list)
    burst_flows: int = 0
    burst_completed: int = 0
    burst_expired: int = 0
    lost: int = 0
    repeated_endings: int = 0
    accounts_blocked: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)  # endings other than completed, by outcome:code
    throttled: int = 0  # 429s the sandbox answered, every account
    seconds: float = 0.0


@dataclass
class TenantsResult:
    load: TenantsLoad
    idle: Phase
    busy: Phase
    workers: int
    concurrency: int

    @property
    def quiet_ratio(self) -> float:
        return self.busy.quiet_e2e_p99_ms / self.idle.quiet_e2e_p99_ms

    @property
    def met(self) -> bool:
        phases = (self.idle, self.busy)
        return (
            self.quiet_ratio <= 1.5
            and self.busy.burst_completed >= 0.95 * self.load.burst_optimum
            and all(not phase.accounts_blocked and phase.throttled == 0 for phase in phases)
            and all(phase.quiet_completed == phase.quiet_flows and phase.lost == 0 for phase in phases)
        )

    def as_json(self) -> dict[str, Any]:
        load = self.load
        return {
            "accounts": load.accounts,
            "rate_limit_per_account": RATE_LIMIT,
            "token_ttl_s": load.token_ttl,
            "burst_flows": load.burst,
            "burst_optimum": load.burst_optimum,
            "quiet_callbacks_per_second_per_account": load.quiet_rate,
            "quiet_flows_per_account": load.quiet_flows,
            "workers": self.workers,
            "concurrency": self.concurrency,
            "idle": _finite(vars(self.idle)),
            "busy": _finite(vars(self.busy)),
            "quiet_p99_ratio_busy_to_idle": _round(self.quiet_ratio),
            "target": TARGET,
            "target_met": self.met,
        }

    def report(self) -> str:
        load, idle, busy = self.load, self.idle, self.busy
        quiet = load.accounts - 1
        lines = [
            f"tenants: {load.accounts} accounts at {RATE_LIMIT} each, tokens {load.token_ttl} s; "
            f"{quiet} quiet accounts at {load.quiet_rate:g} callback/s each for {load.quiet_seconds:g} s; "
            f"one account bursting {load.burst} callbacks at once",
            f"  {'phase':<24} {'quiet done':>11} {'p50 ms':>8} {'p99 ms':>8} {'burst done':>11} "
            f"{'optimum':>8} {'lost':>5} {'blocked':>8} {'429s':>5}",
        ]
        for phase, optimum in ((idle, None), (busy, load.burst_optimum)):
            burst = f"{phase.burst_completed}/{phase.burst_flows}" if phase.burst_flows else "-"
            lines.append(
                f"  {phase.name:<24} {phase.quiet_completed:>5}/{phase.quiet_flows:<5} "
                f"{phase.quiet_e2e_p50_ms:>8.1f} {phase.quiet_e2e_p99_ms:>8.1f} {burst:>11} "
                f"{optimum if optimum is not None else '-':>8} {phase.lost:>5} "
                f"{len(phase.accounts_blocked):>8} {phase.throttled:>5}"
            )
        lines.append(
            f"  quiet accounts' callback-to-terminal p99 beside the burst: {self.quiet_ratio:.2f}x idle; "
            f"target: {TARGET}: {'met' if self.met else 'MISSED'}"
        )
        return "\n".join(lines)


TARGET = "quiet p99 within 1.5x of idle, bursting account >= 95% of its optimum, no block, no 429"


def run_tenants(
    children: Children, redis_url: str, workers: int, concurrency: int, quick: bool
) -> TenantsResult:
    """Starts the sandbox and ours with the tenants file, runs both phases, stops them."""
    load = load_for(quick)
    sandbox = _start_sandbox(children, load)
    directory = Path(tempfile.mkdtemp(prefix="okc-bench-tenants-"))
    tenants_file = directory / "tenants.toml"
    tenants_file.write_text(tenants_toml(load, sandbox.url))
    setup = Setup(redis_url, sandbox, concurrency, workers, RATE_LIMIT)
    system = TenantsPipeline(children, setup, tenants_file)
    try:
        system.start()
        asyncio.run(_warm_up(system, load))
        idle = asyncio.run(_phase(system, sandbox, load, burst=False))
        busy = asyncio.run(_phase(system, sandbox, load, burst=True))
    finally:
        system.stop()
        children.stop([sandbox.child])
    return TenantsResult(load, idle, busy, workers, concurrency)


def account_id(index: int) -> str:
    return f"bench-account-{index:03d}"


def caller_key(index: int) -> str:
    return f"bench-tenant-{index:03d}-caller-key-0123456789"


def tenants_toml(load: TenantsLoad, sandbox_url: str) -> str:
    return "".join(
        f"[tenants.t{index:03d}]\n"
        f'api_keys = ["{caller_key(index)}"]\n'
        'allowed_return_urls = ["https://app.example"]\n'
        f'oktopost = {{ account_id = "{account_id(index)}", api_key = "{account_id(index)}-key", '
        f'base_url = "{sandbox_url}", rate_limit = "{RATE_LIMIT}" }}\n'
        for index in range(load.accounts)
    )


class TenantsPipeline(Pipeline):
    """Ours with TENANTS_FILE: every account's tenant beside the environment's `default`."""

    def __init__(self, children: Children, setup: Setup, tenants_file: Path) -> None:
        super().__init__(children, setup)
        self.tenants_file = tenants_file

    def env(self) -> dict[str, str]:
        return {**super().env(), "TENANTS_FILE": str(self.tenants_file)}


def _start_sandbox(children: Children, load: TenantsLoad) -> SandboxServer:
    upstream = Upstream("sandbox-tenants", load.token_ttl, RATE_LIMIT)
    port = free_port()
    flags = ["--port", str(port), "--token-ttl", str(load.token_ttl), "--rate-limit", RATE_LIMIT]
    flags += ["--block-seconds", str(upstream.block_seconds)]
    for index in range(load.accounts):
        flags.append(f"--account={account_id(index)}:{account_id(index)}-key")
    child: Child = children.start_cli(upstream.name, ["sandbox", *flags])
    wait_for_port(port, child)
    return SandboxServer(f"http://127.0.0.1:{port}", child, upstream)


async def _start_flows(
    system: Pipeline, index: int, count: int, gate: asyncio.Semaphore
) -> list[StartedFlow]:
    """Step 1 for one account's flows, one at a time: the account's budget paces them (a 503 says when
    to ask again)."""
    flows: list[StartedFlow] = []
    async with httpx.AsyncClient(timeout=30) as http:
        while len(flows) < count:
            async with gate:
                answer = await http.post(
                    f"{system.url}/v1/authorizations",
                    json={"network": "LinkedIn", "return_url": "https://app.example/done"},
                    headers={"Authorization": f"Bearer {caller_key(index)}"},
                )
            if answer.status_code == 503:
                await asyncio.sleep(min(1.0, float(answer.headers.get("Retry-After", "1"))))
                continue
            answer.raise_for_status()
            body = answer.json()
            flows.append(StartedFlow(body["flow_id"], body["redirect_url"]))
    return flows


async def _fire_waves(waves: list[list[StartedFlow]], shots: list[Shot]) -> None:
    """Each wave consented, then its callbacks spread over one second; `shots` gets every callback."""
    for wave in waves:
        wave_shots = await consent(wave)
        shots += wave_shots
        await fire(wave_shots, float(len(wave)))


async def _warm_up(system: Pipeline, load: TenantsLoad) -> None:
    """A flow on every account, end to end: each process builds each account's client before timing."""
    gate = asyncio.Semaphore(STEP1_CONCURRENCY)
    started = await asyncio.gather(*(_start_flows(system, index, 1, gate) for index in range(load.accounts)))
    shots = await consent([flow for flows in started for flow in flows])
    expected = {shot.flow_id for shot in shots}
    async with EndingListener(system.setup.redis_url, system.done_channel, system.ended, expected) as ear:
        await fire(shots, None)
        if not await ear.wait(60):
            raise StartupError(f"{system.name}: warm-up flows did not end within 60 s")
    await asyncio.sleep(1.5)  # their calls leave every account's window


async def _phase(system: Pipeline, sandbox: SandboxServer, load: TenantsLoad, *, burst: bool) -> Phase:
    phase = Phase("beside the burst" if burst else "idle (quiet load alone)")
    sandbox.reset()
    gate = asyncio.Semaphore(STEP1_CONCURRENCY)
    quiet_indexes = [index for index in range(load.accounts) if index != BURSTING]
    started = await asyncio.gather(
        *(_start_flows(system, index, load.quiet_flows, gate) for index in quiet_indexes),
        *([_start_flows(system, BURSTING, load.burst, gate)] if burst else []),
    )
    await asyncio.sleep(1.5)  # Step 1's calls leave every account's window before the timed part
    quiet_by_account = dict(zip(quiet_indexes, started[: len(quiet_indexes)], strict=True))
    account_of = {flow.flow_id: index for index, flows in quiet_by_account.items() for flow in flows}
    # the quiet callbacks in waves of one a second per account, each wave consented just before it is
    # called back (a token lives from the user's consent)
    waves = [[flows[turn] for flows in quiet_by_account.values()] for turn in range(load.quiet_flows)]
    bursting = await consent(started[-1]) if burst else []
    stats_before = sandbox.stats()
    expected = set(account_of) | {shot.flow_id for shot in bursting}
    quiet: list[Shot] = []
    async with EndingListener(system.setup.redis_url, system.done_channel, system.ended, expected) as ear:
        firing = [_fire_waves(waves, quiet)]
        if bursting:
            firing.append(fire(bursting, None))
        await asyncio.gather(*firing)
        await ear.wait(load.token_ttl + 10)
        endings = ear.endings
    stats = sandbox.stats()
    shots = [*quiet, *bursting]
    first_sent = min(shot.sent for shot in shots)
    phase.seconds = round(max((at for _, at in endings.first.values()), default=first_sent) - first_sent, 1)
    phase.quiet_flows = len(quiet)
    e2e = []
    by_second: dict[int, list[float]] = {}
    short: dict[str, int] = {}
    for shot in quiet:
        outcome, at = endings.first.get(shot.flow_id, ("lost", math.nan))
        if outcome == "completed":
            e2e.append((at - shot.sent) * 1000)
            by_second.setdefault(int(shot.sent - first_sent), []).append(e2e[-1])
        else:
            name = account_id(account_of[shot.flow_id])
            short[name] = short.get(name, 0) + 1
    phase.quiet_completed = len(e2e)
    phase.quiet_e2e_p50_ms = percentile(e2e, 50)
    phase.quiet_e2e_p99_ms = percentile(e2e, 99)
    phase.quiet_short = short
    phase.quiet_e2e_max_ms_by_second = [round(max(by_second[second]), 1) for second in sorted(by_second)]
    outcomes = [endings.first.get(shot.flow_id, ("lost", 0.0))[0] for shot in bursting]
    phase.burst_flows = len(bursting)
    phase.burst_completed = outcomes.count("completed")
    phase.burst_expired = outcomes.count("expired")
    phase.lost = len(expected) - len(endings.first)
    phase.repeated_endings = endings.repeated
    phase.accounts_blocked = sorted(name for name, counts in stats["accounts"].items() if counts["blocked"])
    phase.throttled = stats["throttled"] - stats_before["throttled"]
    phase.reasons = system.reasons([shot.flow_id for shot in shots])
    return phase


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)


def _finite(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: _round(value) if isinstance(value, float) else value for name, value in fields.items()}
