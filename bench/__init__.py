"""`python -m bench`: ours (shim + worker) against two baselines, as real processes on one machine.

It starts its own redis-server and sandboxes, then for each system (`pipeline`, `inline`,
`naive-celery`) its processes, a warm-up, and every chosen scenario; prints a table and writes JSON.
With `--rounds N` the systems take turns N times on each sandbox, the order reversed every other round,
and the report adds ours / naive-celery round by round and the medians over the rounds.
The `tenants` scenario (many accounts, one bursting), the `connections` scenario (the burst beside
health checks of many connections) and the `rolling` one (a rolling restart of three workers under load)
run on ours alone, after the others (bench/tenants.py, bench/connections.py, bench/rolling.py).
Every child process is stopped at the end, on Ctrl-C and on failure too.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.connections import ConnectionsResult, run_connections
from bench.harness import interrupted_by_sigterm, start_redis, start_replicas
from bench.load import generator_floor
from bench.report import (
    Row,
    cpu_table,
    every_flow_table,
    label,
    ratio_table,
    ratios,
    ratios_as_json,
    shared_account_table,
    table,
)
from bench.rolling import ROLLING, RollingResult, run_rolling
from bench.scenarios import Scenario, define_scenarios, measure, warm_up, with_flows
from bench.systems import (
    BENCH_DISABLE_AFTER_SECONDS,
    BENCH_RETENTION_SECONDS,
    SYSTEMS,
    Pipeline,
    Setup,
    System,
)
from bench.tenants import TenantsResult, run_tenants
from bench.upstream import SandboxServer, start_sandbox
from bench.webhooks import (
    dead_disabled,
    delivery_memory,
    disabled_notices,
    endpoints,
    measure_deliveries,
    webhooks_table,
)
from cli.processes import Child, Children, StartupError

SCENARIO_NAMES = ("overhead", "throughput", "faults", "burst", "burst-shared")  # the default run
TENANTS = "tenants"
CONNECTIONS = "connections"
# opt-in: ours only (the baselines have no webhooks, one Oktopost account each, and keep no connections)
ALL_SCENARIO_NAMES = (*SCENARIO_NAMES, "webhooks", TENANTS, CONNECTIONS, ROLLING)
OURS_ALONE = (TENANTS, CONNECTIONS, ROLLING)  # scenarios with a runner of their own
SYSTEM_NAMES = tuple(SYSTEMS)


@dataclass(frozen=True, slots=True)
class BenchOptions:
    scenarios: tuple[str, ...] = SCENARIO_NAMES
    systems: tuple[str, ...] = SYSTEM_NAMES
    flows: int | None = None  # overrides every scenario's flow count
    json_path: Path | None = None
    workers: int = 1
    concurrency: int = 64
    quick: bool = False
    redis_replicas: int = 0  # replicas of the bench's Redis, for every system
    wait_replicas: int = 0  # ours' REDIS_WAIT_REPLICAS (at most redis_replicas)
    # set for ours' shim and workers in the scenarios measured against the baselines (--pipeline-env)
    pipeline_env: tuple[tuple[str, str], ...] = ()
    traces: bool = False  # ours exports traces to a sink the bench starts (bench/traces.py)
    rounds: int = 1  # the systems take turns this many times on each sandbox (the machine's noise)


def run(options: BenchOptions) -> int:
    log_dir = Path(tempfile.mkdtemp(prefix="okc-bench-"))
    load_at_start = os.getloadavg()
    chosen = _chosen(options)
    try:
        with interrupted_by_sigterm(), Children(log_dir) as children:
            rows, floor, tenants, connections, rolling = _measure_every_system(options, chosen, children)
    except KeyboardInterrupt:
        _say(f"interrupted; every process stopped (logs in {log_dir})")
        return 130
    except (StartupError, OSError) as error:
        _say(f"failed: {error}\n(logs kept in {log_dir})")
        return 1
    rows.sort(key=_row_order)
    if rows:
        _print_report(chosen, rows, floor, options.rounds)
    if tenants is not None:
        print(("\n" if rows else "") + tenants.report())
    if connections is not None:
        print(("\n" if rows or tenants else "") + connections.report())
    if rolling is not None:
        print(("\n" if rows or tenants or connections else "") + rolling.report())
    if options.json_path is not None:
        document = _document(options, chosen, rows, floor, load_at_start)
        if tenants is not None:
            document["tenants"] = tenants.as_json()
        if connections is not None:
            document["connections"] = connections.as_json()
        if rolling is not None:
            document["rolling"] = rolling.as_json()
        options.json_path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {options.json_path}")
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


def _measure_every_system(
    options: BenchOptions, chosen: list[Scenario], children: Children
) -> tuple[
    list[Row],
    tuple[float, float] | None,
    TenantsResult | None,
    ConnectionsResult | None,
    RollingResult | None,
]:
    """Every chosen system through its scenarios, a sandbox at a time: the unlimited scenarios on one,
    then the limited, then the one shared with a careless client, each `--rounds` times over; then ours
    through `tenants`, `connections` and `rolling` (once)."""
    rows: list[Row] = []
    floor: tuple[float, float] | None = None
    redis_url, shared = _start_redis(options, children)
    databases = Databases(redis_url, ours=bool(shared))
    pipeline_env, sink = options.pipeline_env, None
    if options.traces:
        from bench import traces  # the sink decodes with opentelemetry-proto: the otel extra

        sink = traces.start_sink(children)
        pipeline_env = (*pipeline_env, (traces.ENDPOINT_SETTING, sink))
    for upstream in dict.fromkeys(scenario.upstream for scenario in chosen):
        group = [scenario for scenario in chosen if scenario.upstream == upstream]
        sandbox = start_sandbox(children, upstream)
        if floor is None:
            floor = asyncio.run(generator_floor(sandbox.health_url))
        rows += _measure_group(options, group, sandbox, children, databases, pipeline_env, shared)
        children.stop([sandbox.child])
    if sink is not None:
        from bench import traces

        _say(f"pipeline: traces: {traces.received(sink)} at the sink")
    tenants = None
    if TENANTS in options.scenarios and Pipeline.name not in options.systems:
        _say("tenants skipped: it runs on ours only (--system pipeline)")
    if TENANTS in options.scenarios and Pipeline.name in options.systems:
        _say("pipeline: tenants")
        url = databases.next()
        tenants = run_tenants(children, url, options.workers, options.concurrency, options.quick)
        _say(f"pipeline: tenants: quiet p99 {tenants.quiet_ratio:.2f}x idle")
    connections = None
    if CONNECTIONS in options.scenarios:
        url = databases.next()
        connections = _measure_connections(options, children, url)
    rolling = None
    if ROLLING in options.scenarios and Pipeline.name not in options.systems:
        _say("rolling skipped: it runs on ours only (--system pipeline)")
    if ROLLING in options.scenarios and Pipeline.name in options.systems:
        _say("pipeline: rolling")
        url = databases.next()
        rolling = run_rolling(children, url, options.concurrency, options.quick, options.flows)
        _say(f"pipeline: rolling: p99 {rolling.p99_ratio:.2f}x steady")
    return rows, floor, tenants, connections, rolling


def _measure_group(
    options: BenchOptions,
    group: list[Scenario],
    sandbox: SandboxServer,
    children: Children,
    databases: Databases,
    pipeline_env: tuple[tuple[str, str], ...],
    shared: list[Child],
) -> list[Row]:
    """The scenarios of one sandbox on every chosen system, `--rounds` times over: the systems take
    turns, in the order of `round_order`, each run on fresh processes and a database of its own."""
    rows: list[Row] = []
    for number in range(1, options.rounds + 1):
        if options.rounds > 1:
            _say(f"round {number} of {options.rounds}")
        for name in round_order([name for name in SYSTEM_NAMES if name in options.systems], number):
            if name != Pipeline.name and all(scenario.name == "webhooks" for scenario in group):
                if number == 1:
                    _say(f"{name}: webhooks skipped (no webhooks)")  # not even started
                continue
            sized = (options.concurrency, options.workers, sandbox.upstream.rate_limit)
            setup = Setup(
                databases.next(),
                sandbox,
                *sized,
                pipeline_env=pipeline_env,
                wait_replicas=options.wait_replicas,
            )
            measured = _run_system(SYSTEMS[name](children, setup), group, sandbox, shared)
            for row in measured:
                row.round = number
            rows += measured
    return rows


def round_order(names: list[str], number: int) -> list[str]:
    """The systems in the order of round `number` (1-based): as given in odd rounds, reversed in even
    ones, so that a drift of the machine's load over the rounds favours no system."""
    return list(names) if number % 2 else list(reversed(names))


def _row_order(row: Row) -> tuple[int, int, int]:
    return ALL_SCENARIO_NAMES.index(row.scenario), SYSTEM_NAMES.index(row.system), row.round


class Databases:
    """A Redis database of its own for every system run (`ours`: the bench's own redis-server; otherwise
    REDIS_URL as it is, every time). Databases 1-63 go in turn; once all were handed out, each is
    flushed before it is handed out again (the run that had it stopped every process long before)."""

    COUNT = 63  # the bench's redis-server has 64 databases; 0 is left alone

    def __init__(self, redis_url: str, ours: bool) -> None:
        self.redis_url, self.ours, self.handed_out = redis_url, ours, 0

    def next(self) -> str:
        if not self.ours:
            return self.redis_url
        url = _database(self.redis_url, 1 + self.handed_out % self.COUNT)
        if self.handed_out >= self.COUNT:
            _flush(url)
        self.handed_out += 1
        return url


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def _start_redis(options: BenchOptions, children: Children) -> tuple[str, list[Child]]:
    """The bench's Redis and its `--redis-replicas`: its URL, and its processes when they are ours
    (their CPU is counted with Redis's; with REDIS_URL instead there are none)."""
    redis_url, redis_child = start_redis(children)
    if redis_child is None:
        if options.redis_replicas:
            raise StartupError("--redis-replicas needs redis-server on PATH (the bench's own Redis)")
        return redis_url, []
    return redis_url, [redis_child, *start_replicas(children, redis_url, options.redis_replicas)]


def _measure_connections(
    options: BenchOptions, children: Children, redis_url: str
) -> ConnectionsResult | None:
    """Ours through `connections` (it runs on ours only)."""
    if Pipeline.name not in options.systems:
        _say("connections skipped: it runs on ours only (--system pipeline)")
        return None
    _say("pipeline: connections")
    result = run_connections(children, redis_url, options.workers, options.concurrency, options.quick)
    beside, without = result.beside.completed, result.without.completed
    _say(f"pipeline: connections: {beside} completed beside checks, {without} without")
    return result


def _print_report(
    chosen: list[Scenario], rows: list[Row], floor: tuple[float, float] | None, rounds: int
) -> None:
    many = rounds > 1  # a column of the round in the tables
    print(table(rows, many))
    print()
    print(_targets(chosen))
    compared = ratios(rows)
    if compared:
        print()
        print(ratio_table(compared))
    unusual = [row for row in rows if row.reasons or row.refusals or row.lost_fates]
    if unusual:
        print("\nwhy flows did not complete (endings by outcome:code; callbacks refused; lost flows' state):")
        for row in unusual:
            details = {**row.reasons, **{f"callback {k}": v for k, v in row.refusals.items()}}
            details.update({f"lost in {k}": v for k, v in row.lost_fates.items()})
            listed = ", ".join(f"{name} {count}" for name, count in details.items())
            print(f"  {label(row, many)}  {listed}")
    if any(row.cpu_seconds for row in rows):
        print("\nCPU ms per flow while timed (cpu/fl: the system's processes and Redis; the sandbox and")
        print("the load generator aside):")
        print(cpu_table(rows, many))
    if any(row.completed < row.flows for row in rows):
        print("\ne2e p50 ms over completed flows (the table's column) and over every flow (a flow that did")
        print("not complete counts as never completing):")
        print(every_flow_table(rows, many))
    staged = [row for row in rows if row.stages_p50_ms]
    if staged:
        print("\nwhere ours' time goes, p50 ms (callback sent -> claimed -> terminal event -> seen):")
        for row in staged:
            where = f"{row.scenario:<12}" + (f"  round {row.round}" if many else "")
            print(f"  {where}  " + ", ".join(f"{k} {v:.1f}" for k, v in row.stages_p50_ms.items()))
    if any(row.shared is not None for row in rows):
        print("\nthe account shared with a careless client (calls: the system's own; blocks and calls in")
        print("them from the sandbox's log; after 1st 429: its calls in a block after its first 429 there):")
        print(shared_account_table(rows, many))
    if any(row.webhooks is not None for row in rows):
        print(
            "\nwebhooks (events of the timed flows; accepted by the steady and the flaky endpoint; deliveries"
        )
        print("accepted a second, both endpoints; lag: event's `at` -> first accepted delivery, ms):")
        print(webhooks_table(rows))
    if floor is not None:
        print(f"load generator floor (a trivial GET): p50 {floor[0]:.2f} ms, p99 {floor[1]:.2f} ms")


def _chosen(options: BenchOptions) -> list[Scenario]:
    defined = define_scenarios(options.quick, _burst_token_ttl(options))
    names = [name for name in ALL_SCENARIO_NAMES if name in options.scenarios and name not in OURS_ALONE]
    picked = [defined[name] for name in names]
    return [with_flows(s, options.flows) for s in picked] if options.flows else picked


def _burst_token_ttl(options: BenchOptions) -> int:
    return 2 if options.quick else 8


def _run_system(
    system: System, group: list[Scenario], sandbox: SandboxServer, shared: list[Child]
) -> list[Row]:
    _say(f"{system.name}: starting")
    rows: list[Row] = []
    try:
        system.start()
        asyncio.run(warm_up(system, sandbox, system.setup.redis_url))
        restarted = False
        for index, scenario in enumerate(group):
            if index and _left_broken(rows[-1]):
                # an overloaded app can stay broken after its load is gone (the inline baseline's
                # connection pool: every later call waited out its pool timeout), so the next
                # scenario gets fresh processes rather than the last one's leftovers
                _say(f"{system.name}: restarting after {rows[-1].scenario} lost flows or callbacks")
                system.stop()
                system.start()
                asyncio.run(warm_up(system, sandbox, system.setup.redis_url))
                restarted = True
            if scenario.name == "webhooks" and not isinstance(system, Pipeline):
                _say(f"{system.name}: {scenario.name} skipped (no webhooks)")
                continue
            _say(f"{system.name}: {scenario.name} ({scenario.flows} flows)")
            watched = [*system.processes, sandbox.child, *shared]
            if scenario.name == "webhooks" and isinstance(system, Pipeline):
                row = measure_webhooks(system, scenario, sandbox, watched)
            else:
                row = asyncio.run(measure(system, scenario, sandbox, system.setup.redis_url, watched))
            row.restarted_before, restarted = restarted, False
            _say(
                f"{system.name}: {scenario.name}: {row.completed}/{row.flows} completed, {row.lost} lost, "
                + (
                    "no flows/s figure"
                    if math.isnan(row.flows_per_second)
                    else f"{row.flows_per_second:.1f} flows/s"
                )
            )
            rows.append(row)
    finally:
        system.stop()
    return rows


def measure_webhooks(
    system: Pipeline, scenario: Scenario, sandbox: SandboxServer, watched: list[Child]
) -> Row:
    """The webhooks scenario: its flows first without the dead endpoint, then with it (the row)."""
    with endpoints(system.children, system, dead=False) as registered:
        without = asyncio.run(measure(system, scenario, sandbox, system.setup.redis_url, watched))
        alone = measure_deliveries(registered, without, scenario.settle + 60)
    with endpoints(system.children, system, dead=True) as registered:
        row = asyncio.run(measure(system, scenario, sandbox, system.setup.redis_url, watched))
        figures = measure_deliveries(registered, row, scenario.settle + 60)
        deadline = time.monotonic() + BENCH_DISABLE_AFTER_SECONDS + 10
        while not dead_disabled(registered) and time.monotonic() < deadline:
            time.sleep(0.2)
        figures.dead_disabled = dead_disabled(registered)
        time.sleep(1.0)  # the notice's delivery to the steady endpoint
        figures.disabled_notices = disabled_notices(registered)
        figures.lag_p50_without_dead_ms = alone.lag_p50_ms
        figures.lag_p99_without_dead_ms = alone.lag_p99_ms
        figures.delivery_memory_bytes = delivery_memory(system)
        time.sleep(BENCH_RETENTION_SECONDS + 2)
        figures.delivery_memory_after_retention_bytes = delivery_memory(system)
    row.webhooks = figures
    row.target_met = row.target_met and without.target_met and figures.dead_disabled
    row.target_met = row.target_met and figures.disabled_notices == 1
    return row


def _left_broken(row: Row) -> bool:
    """Flows without an ending, or callbacks never answered: the system may not have recovered."""
    return row.lost > 0 or any(not refusal.startswith("HTTP") for refusal in row.refusals)


def _database(url: str, index: int) -> str:
    """The URL with another database number: every system gets a Redis of its own (brokers included)."""
    base, _, last = url.rpartition("/")
    return f"{base}/{index}" if last.isdigit() else f"{url.rstrip('/')}/{index}"


def _targets(chosen: list[Scenario]) -> str:
    return "targets:\n" + "\n".join(f"  {scenario.name:<12}  {scenario.target}" for scenario in chosen)


def _document(
    options: BenchOptions,
    chosen: list[Scenario],
    rows: list[Row],
    floor: tuple[float, float] | None,
    load_at_start: tuple[float, float, float],
) -> dict[str, Any]:
    return {
        # `python -m bench ...` runs bench/__main__.py as sys.argv[0]; a test calling run() has no command
        "command": "python -m bench " + " ".join(sys.argv[1:]) if _run_as_bench_module() else "",
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            # other work on the machine skews every figure: compare rows of one run, and runs by ratio
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "generator_floor_ms": None
        if floor is None
        else {"p50": round(floor[0], 3), "p99": round(floor[1], 3)},
        "options": {
            "quick": options.quick,
            "workers": options.workers,
            "concurrency": options.concurrency,
            "systems": list(options.systems),
            "flows_override": options.flows,
            "redis_replicas": options.redis_replicas,
            "wait_replicas": options.wait_replicas,
            "pipeline_env": [name for name, _ in options.pipeline_env],  # names only: a value may be secret
            "traces": options.traces,
            "rounds": options.rounds,
        },
        "scenarios": {scenario.name: scenario.describe() for scenario in chosen},
        "rows": [row.as_json() for row in rows],
        # ours / naive-celery per scenario: each round's pair and the medians over the rounds
        "ratios": ratios_as_json(ratios(rows)),
    }


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _run_as_bench_module() -> bool:
    return Path(sys.argv[0]).parts[-2:] == ("bench", "__main__.py")
