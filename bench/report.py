"""One row of the benchmark per scenario, system and round: its figures, the target it is held to, the
tables printed at the end (ours against naive-celery as ratios among them) and the JSON written with
`--json`."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class SharedAccount:
    """The account shared with a careless client: the blocks, and the system's calls during them."""

    careless_calls: int = 0  # the other client's calls in the timed part
    blocks: int = 0  # how many times the sandbox blocked the account
    calls_in_blocks: int = 0  # the system's calls the sandbox refused while blocked, first 429s included
    calls_after_first_429: int = 0  # the system's calls in a block after its own first 429 in it


@dataclass
class WebhookFigures:
    events: int  # events of the timed flows, each to be delivered to both endpoints
    delivered_steady: int
    delivered_flaky: int
    # deliveries accepted a second (both endpoints), between the 10th and 90th percentile of their times
    events_delivered_per_second: float
    lag_p50_ms: float  # the steady endpoint: event `at` -> delivery accepted
    lag_p99_ms: float
    flaky_lag_p50_ms: float  # the endpoint answering 503 half the time (retries included)
    flaky_lag_p99_ms: float
    refused_by_flaky: int  # 503s it answered
    # a third endpoint limited to LIMITED_RATE, taking connection.* only
    delivered_limited: int = 0
    limited_events: int = 0
    limited_busiest_second: int = 0  # the most attempts it got in any second
    # a fourth endpoint that is dead (503 always): disabled after WEBHOOK_DISABLE_AFTER_SECONDS
    dead_disabled: bool = False
    disabled_notices: int = 0  # webhook.disabled events the steady endpoint accepted (1 expected)
    # the same flows with no dead endpoint: the steady endpoint's lag then (the dead one's cost is the ratio)
    lag_p50_without_dead_ms: float = float("nan")
    lag_p99_without_dead_ms: float = float("nan")
    # Redis memory of the deliveries (hashes and listings), at the end and once retention has passed
    delivery_memory_bytes: int = 0
    delivery_memory_after_retention_bytes: int = 0


@dataclass
class Row:
    scenario: str
    system: str
    flows: int
    completed: int
    expired: int
    failed: int
    lost: int  # no ending at all within the scenario's settle time
    flows_per_second: float  # completions a second between their 10th and 90th percentile times
    callback_p50_ms: float
    callback_p99_ms: float
    e2e_p50_ms: float  # callback sent -> ending seen on Redis, completed flows
    e2e_p99_ms: float
    upstream_429s: int
    offered_rate: float | None  # callbacks a second; None: all at once
    callbacks_refused: int  # callbacks answered with 4xx/5xx or not at all
    repeated_endings: int  # endings seen more than once for a flow
    upstream_calls: int  # /v2/ calls the sandbox saw during the timed part
    rate_limit_429s: int
    block_tripped: bool
    seconds: float  # first callback sent -> last ending seen (or the settle time ran out)
    generator_lag_p99_ms: float  # how late the load generator sent callbacks (its own slowness)
    # callback sent -> completed, over every flow: one that did not complete counts as never completing
    # (infinite), so a system that gives half its flows up has no finite median (see every_flow_p50)
    e2e_p50_every_flow_ms: float = math.nan
    idle_wait_s: float = 0.0  # waited before Step 1 for the system to finish earlier work
    stages_p50_ms: dict[str, float] = field(default_factory=dict)  # ours: where the time goes
    lost_fates: dict[str, int] = field(default_factory=dict)  # lost flows by the state they were left in
    reasons: dict[str, int] = field(default_factory=dict)  # endings other than completed, by outcome:code
    refusals: dict[str, int] = field(default_factory=dict)  # callbacks not accepted: HTTP status or error
    restarted_before: bool = False  # the system was restarted: the scenario before left it broken
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # per process, during the timed part
    optimum: int | None = None  # the most flows any system could complete (limited scenarios)
    shared: SharedAccount | None = None  # burst-shared: the blocks the careless client brought on
    webhooks: WebhookFigures | None = None  # webhooks: deliveries to the two endpoints
    target: str = ""
    target_met: bool | None = None
    round: int = 1  # which of `--rounds` (1-based): each round runs every system once more

    def cpu_ms_per_flow(self) -> dict[str, float]:
        return {
            name: round(1000 * seconds / max(1, self.flows), 2) for name, seconds in self.cpu_seconds.items()
        }

    def system_cpu_ms_per_flow(self) -> dict[str, float]:
        """CPU ms per flow of the system's own processes and Redis (not the sandbox, not the bench)."""
        return {
            name: ms for name, ms in self.cpu_ms_per_flow().items() if not name.startswith(_NOT_THE_SYSTEMS)
        }

    @property
    def cpu_per_flow_ms(self) -> float:
        """The sum of `system_cpu_ms_per_flow`: what a flow costs the machine, Oktopost's part aside."""
        return round(sum(self.system_cpu_ms_per_flow().values()), 2) if self.cpu_seconds else math.nan

    def as_json(self) -> dict[str, Any]:
        figures = asdict(self)
        figures["cpu_ms_per_flow"] = self.cpu_ms_per_flow()
        figures["system_cpu_ms_per_flow"] = self.system_cpu_ms_per_flow()
        figures["cpu_per_flow_ms"] = self.cpu_per_flow_ms
        return {name: _finite(value) for name, value in figures.items()}


def every_flow_p50(completed_e2e: Sequence[float], flows: int) -> float:
    """The median time to completion over `flows` flows, of which those in `completed_e2e` completed: the
    others count as never completing, so it is infinite when fewer than half completed."""
    ordered = sorted(completed_e2e) + [math.inf] * max(0, flows - len(completed_e2e))
    return ordered[max(0, math.ceil(len(ordered) / 2) - 1)] if ordered else math.nan


def label(row: Row, rounds: bool = False) -> str:
    """The row's scenario and system as the report's tables begin a line, and its round with `rounds`."""
    return f"{row.scenario:<12}  {row.system:<12}" + (f"  {row.round:>5}" if rounds else "")


def every_flow_table(rows: Sequence[Row], rounds: bool = False) -> str:
    """e2e p50 over completed flows (the table's column) beside the one over every flow."""
    lines = []
    for row in rows:
        every = row.e2e_p50_every_flow_ms
        shown = "never (under half completed)" if math.isinf(every) else _cell(every)
        completed = _cell(row.e2e_p50_ms)
        lines.append(f"  {label(row, rounds)}  completed {completed:>8}  every flow {shown}")
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        if math.isinf(value):
            return "never"  # JSON has no infinity
        return None if math.isnan(value) else round(value, 3)
    if isinstance(value, dict):
        return {name: _finite(item) for name, item in value.items()}
    return value


_COLUMNS = (
    ("scenario", 12, "scenario"),
    ("system", 12, "system"),
    ("flows", 5, "flows"),
    ("completed", 5, "done"),
    ("expired", 5, "exp"),
    ("failed", 5, "fail"),
    ("lost", 4, "lost"),
    ("flows_per_second", 7, "flows/s"),
    ("callback_p50_ms", 7, "cb p50"),
    ("callback_p99_ms", 7, "cb p99"),
    ("e2e_p50_ms", 8, "e2e p50"),
    ("e2e_p99_ms", 8, "e2e p99"),
    ("upstream_429s", 5, "429s"),
    ("block_tripped", 5, "block"),
    ("cpu_per_flow_ms", 6, "cpu/fl"),
)
# processes timed beside a system that are not part of it: Oktopost's stand-in and the load generator
_NOT_THE_SYSTEMS = ("sandbox", "bench", "careless", "receiver")


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.1f}" if value < 1000 else f"{value:.0f}"
    return str(value)


def cpu_table(rows: Sequence[Row], rounds: bool = False) -> str:
    """Each row's CPU ms per flow, process by process (the system's own and Redis), and their sum."""
    lines = []
    for row in rows:
        parts = " + ".join(f"{name} {ms:.2f}" for name, ms in row.system_cpu_ms_per_flow().items())
        lines.append(f"  {label(row, rounds)}  {parts} = {row.cpu_per_flow_ms:.2f}")
    return "\n".join(lines)


def table(rows: Sequence[Row], rounds: bool = False) -> str:
    """The rows as a fixed-width table (times in ms), each with its target verdict; with `rounds`, a
    column of the round each row was measured in."""
    columns = (*_COLUMNS[:2], ("round", 5, "round"), *_COLUMNS[2:]) if rounds else _COLUMNS
    header = "  ".join(
        title.rjust(width) if i > 1 else title.ljust(width) for i, (_, width, title) in enumerate(columns)
    )
    lines = [header + "  target", "-" * (len(header) + 8)]
    for row in rows:
        cells = []
        for i, (name, width, _) in enumerate(columns):
            text = _cell(getattr(row, name))
            cells.append(text.rjust(width) if i > 1 else text.ljust(width))
        verdict = "" if row.target_met is None else ("met" if row.target_met else "MISSED")
        lines.append("  ".join(cells) + "  " + verdict)
    return "\n".join(lines)


def shared_account_table(rows: Sequence[Row], rounds: bool = False) -> str:
    """The rows with a careless client on the account: completions against the optimum, and the
    system's own calls (every call but the careless client's) in total and during the blocks."""
    round_title = "round  " if rounds else ""
    lines = [
        f"{'scenario':<12}  {'system':<12}  {round_title}{'done/optimum':>12}  {'fail':>4}  {'exp':>4}  "
        f"{'calls':>5}  {'blocks':>6}  {'in blocks':>9}  {'after 1st 429':>13}  {'careless':>8}"
    ]
    for row in rows:
        if row.shared is None:
            continue
        shared = row.shared
        done = f"{row.completed}/{row.optimum if row.optimum is not None else '-'}"
        lines.append(
            f"{label(row, rounds)}  {done:>12}  {row.failed:>4}  {row.expired:>4}  "
            f"{row.upstream_calls - shared.careless_calls:>5}  {shared.blocks:>6}  "
            f"{shared.calls_in_blocks:>9}  {shared.calls_after_first_429:>13}  {shared.careless_calls:>8}"
        )
    return "\n".join(lines)


OURS, BASELINE = "pipeline", "naive-celery"
# the figures compared as ours / naive-celery: (Row's attribute, the table's title, which way is better)
RATIO_FIGURES = (
    ("flows_per_second", "flows/s", "higher"),
    ("callback_p99_ms", "cb p99", "lower"),
    ("e2e_p50_ms", "e2e p50", "lower"),
    ("cpu_per_flow_ms", "cpu/fl", "lower"),
)


def _ratio(ours: Row | None, naive: Row | None, name: str) -> float | None:
    """ours / naive of one figure; None when either row or figure is missing, NaN or 0."""
    if ours is None or naive is None:
        return None
    mine, theirs = getattr(ours, name), getattr(naive, name)
    if not (isinstance(mine, float | int) and isinstance(theirs, float | int)):
        return None
    if not (math.isfinite(mine) and math.isfinite(theirs)) or mine == 0 or theirs == 0:
        return None
    return mine / theirs


def ratios(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """Per scenario with rows of both ours and naive-celery: ours / naive-celery of each RATIO_FIGURES
    figure in each round (both measured in the same round, so at nearly the same minutes of the
    machine's load), and the median of those over the rounds (None where no round has the figure)."""
    by_key = {(row.scenario, row.system, row.round): row for row in rows}
    compared: dict[str, dict[str, Any]] = {}
    for scenario in dict.fromkeys(row.scenario for row in rows):
        numbers = sorted({row.round for row in rows if row.scenario == scenario})
        if not any((scenario, OURS, n) in by_key for n in numbers) or not any(
            (scenario, BASELINE, n) in by_key for n in numbers
        ):
            continue
        per_round: list[dict[str, Any]] = [
            {"round": n}
            | {
                name: _ratio(by_key.get((scenario, OURS, n)), by_key.get((scenario, BASELINE, n)), name)
                for name, _, _ in RATIO_FIGURES
            }
            for n in numbers
        ]
        medians: dict[str, float | None] = {}
        for name, _, _ in RATIO_FIGURES:
            found: list[float] = [figures[name] for figures in per_round if figures[name] is not None]
            medians[name] = statistics.median(found) if found else None
        compared[scenario] = {"rounds": per_round, "median": medians}
    return compared


def ratios_as_json(compared: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The ratios rounded for the JSON (None stays null)."""

    def rounded(figures: dict[str, Any]) -> dict[str, Any]:
        return {
            name: round(value, 3) if isinstance(value, float) else value for name, value in figures.items()
        }

    return {
        scenario: {"rounds": [rounded(r) for r in figures["rounds"]], "median": rounded(figures["median"])}
        for scenario, figures in compared.items()
    }


def ratio_table(compared: dict[str, dict[str, Any]]) -> str:
    """The ratios, a line per scenario and round, and a median line per scenario measured in more than
    one round; `-` where a figure is missing or 0 in either row."""
    better = {
        way: ", ".join(title for _, title, direction in RATIO_FIGURES if direction == way)
        for way in ("higher", "lower")
    }
    medians = any(len(figures["rounds"]) > 1 for figures in compared.values())
    lines = [
        "ours / naive-celery, the two systems' rows of each round"
        + (" and the median over the rounds" if medians else "")
        + f" ({better['higher']}:",
        f"above 1 is ours better; {better['lower']}: below 1 is ours better):",
        f"  {'scenario':<12}  {'round':>6}" + "".join(f"  {title:>7}" for _, title, _ in RATIO_FIGURES),
    ]

    def line(scenario: str, which: str, figures: dict[str, Any]) -> str:
        cells = "".join(
            f"  {'-' if figures[name] is None else f'{figures[name]:.2f}':>7}" for name, _, _ in RATIO_FIGURES
        )
        return f"  {scenario:<12}  {which:>6}{cells}"

    for scenario, figures in compared.items():
        for per_round in figures["rounds"]:
            lines.append(line(scenario, str(per_round["round"]), per_round))
        if len(figures["rounds"]) > 1:
            lines.append(line(scenario, "median", figures["median"]))
    return "\n".join(lines)
