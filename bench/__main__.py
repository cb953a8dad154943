"""`python -m bench`: ours against two baselines, run from a checkout (the bench is not installed).

python -m bench [--quick] [--scenario S] [--system S] [--json PATH] [--flows N] [--workers N]
                [--redis-replicas N [--wait-replicas N]]
                [--pipeline-env KEY=VALUE] [--traces] [--rounds N]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import ALL_SCENARIO_NAMES, SCENARIO_NAMES, SYSTEM_NAMES, BenchOptions, run


def fail(message: str) -> int:
    print(f"python -m bench: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Start Redis, sandboxes, ours and two baselines as real processes; time callback "
        "to terminal in each scenario; print a table.",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=ALL_SCENARIO_NAMES,
        help="run this scenario (repeatable; default all but webhooks, which measures ours only)",
    )
    parser.add_argument(
        "--system",
        action="append",
        choices=SYSTEM_NAMES,
        help="measure this system (repeatable; default all: ours and both baselines)",
    )
    parser.add_argument("--flows", type=int, default=None, help="flows per scenario, overriding each default")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes per Celery system (default 1)"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="threads per worker process (default 64)")
    parser.add_argument("--quick", action="store_true", help="a short run with few flows (for tests)")
    parser.add_argument(
        "--redis-replicas",
        type=int,
        default=0,
        help="start this many replicas of the bench's Redis, for every system (default 0)",
    )
    parser.add_argument(
        "--wait-replicas",
        type=int,
        default=0,
        help="ours' REDIS_WAIT_REPLICAS: acknowledged steps wait for this many replicas (default 0)",
    )
    parser.add_argument(
        "--pipeline-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for ours' shim and workers in the scenarios run against the baselines (repeatable)",
    )
    parser.add_argument(
        "--traces",
        action="store_true",
        help="ours exports OpenTelemetry traces to a sink the bench starts (needs the otel extra)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="the systems take turns this many times on each sandbox, the order reversed every other "
        "round; reports ours / naive-celery per round and the medians (default 1)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        return fail("--rounds must be at least 1")
    if (args.flows is not None and args.flows < 1) or args.workers < 1 or args.concurrency < 1:
        return fail("--flows, --workers and --concurrency must be at least 1")
    if not 0 <= args.wait_replicas <= args.redis_replicas:
        return fail("--wait-replicas must be between 0 and --redis-replicas")
    settings = [setting.partition("=") for setting in args.pipeline_env]
    if any(not name or not equals for name, equals, _ in settings):
        return fail("--pipeline-env takes KEY=VALUE")
    return run(
        BenchOptions(
            scenarios=tuple(args.scenario or SCENARIO_NAMES),
            systems=tuple(args.system or SYSTEM_NAMES),
            flows=args.flows,
            json_path=args.json,
            workers=args.workers,
            concurrency=args.concurrency,
            quick=args.quick,
            redis_replicas=args.redis_replicas,
            wait_replicas=args.wait_replicas,
            pipeline_env=tuple((name, value) for name, _, value in settings),
            traces=args.traces,
            rounds=args.rounds,
        )
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
