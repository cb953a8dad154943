"""What a callback's claim costs, without HTTP or other processes: the shim's Redis part, one at a time.

    python -m bench.onecallback [--callbacks 3000] [--json PATH]

A private redis-server, as the benchmark starts one. `--callbacks` flows are created, then called back
one after the other in one thread, each way the shim can claim one, after 200 callbacks of warm-up:
`claim_on_read` (the flow read and claimed in one call, the shim's usual callback) and a read followed
by `claim_callback` (two calls: the way the shim claims a flow it has read, on a confirmation's form).
Printed per callback, for each way: this process's CPU, Redis's CPU, Redis's commands (sent and inside
scripts) and the wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis

from bench.onetask import PerFlow, costs, private_redis, redis_commands, redis_cpu
from worker.flows.flow import Flow, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames

WARM_UP = 200
WAYS = ("read_and_claim_in_one_call", "read_then_claim")


def measure(url: str, callbacks: int, way: str) -> PerFlow:
    client = redis.Redis.from_url(url)
    store = FlowStore(client, RedisNames(f"onecallback-{way}"), Lifetimes())
    claim = _claims(store)[way]
    flows = [
        store.create(f"{way}-{index:032d}", "LinkedIn", "profile", None, None)
        for index in range(WARM_UP + callbacks)
    ]
    for index, flow in enumerate(flows[:WARM_UP]):
        claim(flow, _token(index))
    before_cpu, before_commands = redis_cpu(client), redis_commands(client)
    wall, cpu = time.perf_counter(), time.process_time()
    for index, flow in enumerate(flows[WARM_UP:], start=WARM_UP):
        claim(flow, _token(index))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    spent, commands = redis_cpu(client) - before_cpu, redis_commands(client) - before_commands
    return PerFlow(
        callbacks,
        round(cpu / callbacks * 1e6),
        round(spent / callbacks * 1e6),
        round(commands / callbacks, 1),
        round(wall / callbacks * 1e6),
    )


def _claims(store: FlowStore) -> dict[str, Callable[[Flow, str], None]]:
    def in_one_call(flow: Flow, token: str) -> None:
        _, claim = store.claim_on_read(
            flow.flow_id, token, None, browser_fp="", start_fp="", tenants_requiring_start=()
        )
        if claim is None or not claim.done:
            raise RuntimeError(f"{flow.flow_id} was not claimed")

    def read_then_claim(flow: Flow, token: str) -> None:
        read = store.get(flow.flow_id)
        if read is None or not store.claim_callback(read, token).done:
            raise RuntimeError(f"{flow.flow_id} was not claimed")

    return {"read_and_claim_in_one_call": in_one_call, "read_then_claim": read_then_claim}


def _token(index: int) -> str:
    return f"591c6053d81978.{index:040d}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.onecallback", description=__doc__.split("\n")[0])
    parser.add_argument("--callbacks", type=int, default=3000)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args(argv)
    if args.callbacks < 1:
        print("python -m bench.onecallback: --callbacks must be at least 1", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    with private_redis("okc-onecallback-") as url:
        for way in WAYS:
            result = measure(url, args.callbacks, way)
            results[way] = asdict(result)
            print(f"{way.replace('_', ' ')}: {result.flows} callbacks, per callback: {costs(result)}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
