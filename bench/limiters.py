"""Why the upstream budget is our own and not the `limits` library: the two side by side, measured.

    python -m bench.limiters [--flows 80] [--rate 10] [--call-ms 300] [--json PATH]

(`limits` is in the `tools` extra: `pip install 'oktopost-connect[tools]'`.) A private redis-server, as
the benchmark starts one. A burst of flows each needs one upstream call before its own deadline, the
deadlines spread evenly over 1-8 s (tokens at every age); a call lasts `--call-ms`. Each flow is a thread:

- `limits`: its Redis moving window (`MovingWindowRateLimiter.hit`), the library the issue suggests.
  A flow asks until a hit succeeds or its deadline is too near, sleeping until the window's reset as
  `get_window_stats` tells it (at most 0.25 s) between asks: whoever asks first after a slot frees wins.
- ours (`worker/upstream/budget.py`): each flow waits in one queue ordered by deadline, and a call is counted
  until it *ends*, not from when it starts.

Printed per limiter: flows whose call finished in time against the offline optimum (earliest deadline
first), and "Oktopost's worst window": the most calls whose request could reach Oktopost inside one
window of the limit (those that started before the window's end and ended after its start). A limiter
that lets that exceed the limit can trip the 15-minute block whenever the network is slow.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from bench.harness import start_redis
from cli.processes import Children
from worker.keys import RedisNames
from worker.upstream.budget import NoBudgetInTime, UpstreamBudget

PERIOD = 1.0  # the window of the limit, seconds: `--rate` calls a second
EARLIEST_DEADLINE, LATEST_DEADLINE = 1.0, 8.0
MAX_SLEEP = 0.25


@dataclass
class Result:
    limiter: str
    flows: int
    completed: int
    optimum: int
    worst_window: int
    limit: int
    redis_commands_per_flow: float
    seconds: float

    @property
    def within_limit(self) -> bool:
        return self.worst_window <= self.limit


@dataclass(frozen=True, slots=True)
class Call:
    start: float
    end: float
    deadline: float


def deadlines(flows: int, start: float) -> list[float]:
    """Evenly spread over [EARLIEST_DEADLINE, LATEST_DEADLINE] after `start`, shuffled by a fixed rule."""
    spread = [
        start + EARLIEST_DEADLINE + (LATEST_DEADLINE - EARLIEST_DEADLINE) * i / max(1, flows - 1)
        for i in range(flows)
    ]
    return [spread[(i * 37) % flows] for i in range(flows)] if flows % 37 else spread


def optimum(flow_deadlines: list[float], start: float, rate: int, call_seconds: float) -> int:
    """The most flows a limiter could serve without letting Oktopost's worst window exceed the limit:
    a call holds its slot from its start to one period after its end, so `rate` calls begin every
    period + call; earliest deadline first is optimal for calls of equal length."""
    served = 0
    for deadline in sorted(flow_deadlines):
        begins = start + (served // rate) * (PERIOD + call_seconds)
        if begins + call_seconds <= deadline:
            served += 1
    return served


def worst_window(calls: list[Call], period: float = PERIOD) -> int:
    """The most calls that intersect one window [t, t + period): for t at every call's end."""
    worst = 0
    for edge in (call.end for call in calls):
        t = edge - 1e-9
        worst = max(worst, sum(1 for c in calls if c.start < t + period and c.end > t))
    return worst


def run_flows(
    flows: int, acquire: Callable[[float], Callable[[], None] | None], call_seconds: float
) -> tuple[list[Call], float]:
    """One thread per flow: acquire (None: gave up), make the call, tell the limiter it ended."""
    start = time.time() + 0.2  # every thread is waiting when the burst begins
    own = deadlines(flows, start)
    calls: list[Call] = []
    lock = threading.Lock()

    def flow(deadline: float) -> None:
        time.sleep(max(0.0, start - time.time()))
        finished = acquire(deadline)
        if finished is None:
            return
        began = time.time()
        time.sleep(call_seconds)
        ended = time.time()
        finished()
        with lock:
            calls.append(Call(began, ended, deadline))

    threads = [threading.Thread(target=flow, args=(deadline,)) for deadline in own]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return calls, start


def with_limits(
    client_url: str, rate: int, call_seconds: float
) -> Callable[[float], Callable[[], None] | None]:
    from limits import RateLimitItemPerSecond
    from limits.storage import RedisStorage
    from limits.strategies import MovingWindowRateLimiter

    limiter = MovingWindowRateLimiter(RedisStorage(client_url))
    item = RateLimitItemPerSecond(rate, 1)
    key = uuid.uuid4().hex

    def acquire(deadline: float) -> Callable[[], None] | None:
        while time.time() + call_seconds <= deadline:
            if limiter.hit(item, key):
                return lambda: None  # `limits` counts a call from its start: nothing to say at its end
            reset, _ = limiter.get_window_stats(item, key)
            time.sleep(min(MAX_SLEEP, max(0.001, reset - time.time())))
        return None

    return acquire


def with_ours(
    client: redis.Redis, rate: int, call_seconds: float
) -> Callable[[float], Callable[[], None] | None]:
    budget = UpstreamBudget(
        client, RedisNames(f"limiters-{uuid.uuid4().hex[:8]}").account("bench"), rate, PERIOD
    )

    def acquire(deadline: float) -> Callable[[], None] | None:
        try:
            grant = budget.acquire(
                priority=deadline, give_up_at=deadline - call_seconds, hold=call_seconds + 1
            )
        except NoBudgetInTime:
            return None
        return lambda: budget.finished(grant)

    return acquire


def measure(name: str, url: str, flows: int, rate: int, call_seconds: float) -> Result:
    client: Any = redis.Redis.from_url(url)  # redis-py annotates commands as sync-or-async; this is sync
    acquire = (
        with_limits(url, rate, call_seconds) if name == "limits" else with_ours(client, rate, call_seconds)
    )
    commands_before = int(client.info("stats")["total_commands_processed"])
    began = time.monotonic()
    calls, start = run_flows(flows, acquire, call_seconds)
    seconds = time.monotonic() - began
    commands = int(client.info("stats")["total_commands_processed"]) - commands_before - 1
    in_time = [call for call in calls if call.end <= call.deadline]
    client.close()
    return Result(
        limiter=name,
        flows=flows,
        completed=len(in_time),
        optimum=optimum(deadlines(flows, start), start, rate, call_seconds),
        worst_window=worst_window(calls),
        limit=rate,
        redis_commands_per_flow=round(commands / flows, 1),
        seconds=round(seconds, 1),
    )


def table(results: Sequence[Result]) -> str:
    lines = [
        f"{'limiter':<8} {'flows':>5} {'in time':>8} {'optimum':>8} {'worst window':>13} "
        f"{'limit':>6} {'redis cmds/flow':>16} {'seconds':>8}"
    ]
    for r in results:
        lines.append(
            f"{r.limiter:<8} {r.flows:>5} {r.completed:>8} {r.optimum:>8} {r.worst_window:>13} "
            f"{r.limit:>6} {r.redis_commands_per_flow:>16} {r.seconds:>8}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limiters", description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=80)
    parser.add_argument("--rate", type=int, default=10, help="calls a second (default 10)")
    parser.add_argument("--call-ms", type=int, default=300, help="how long each upstream call lasts")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args(argv)
    if args.flows < 1 or args.rate < 1 or args.call_ms < 0:
        print("python -m bench.limiters: --flows and --rate must be at least 1", file=sys.stderr)
        return 2
    try:
        import limits  # noqa: F401
    except ImportError:
        print(
            "python -m bench.limiters: needs `limits` (pip install 'oktopost-connect[tools]')",
            file=sys.stderr,
        )
        return 2
    with Children(Path(tempfile.mkdtemp(prefix="okc-limiters-"))) as children:
        url, _ = start_redis(children)
        results = [
            measure(name, url, args.flows, args.rate, args.call_ms / 1000) for name in ("limits", "ours")
        ]
    print(table(results))
    if args.json is not None:
        document: dict[str, Any] = {
            "options": vars(args) | {"json": str(args.json)},
            "results": [asdict(r) | {"within_limit": r.within_limit} for r in results],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
