"""What our task code costs a flow, without Celery, HTTP or other processes: steadier than the bench's runs.

    python -m bench.onetask [--flows 2000] [--json PATH]

A private redis-server, as the benchmark starts one. `--flows` flows are created and called back, then
verified one after the other in one thread by `worker.tasks.work.verify_flow` (the task's body: the take
with its budget ask, the Oktopost call through the real client on an `httpx.MockTransport` answering a
verified profile at once, the terminal transition), after 100 flows of warm-up. Printed per flow: this
process's CPU, Redis's CPU, Redis's commands (sent and inside scripts) and the wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.harness import start_redis
from cli.processes import Children
from worker.flows.flow import Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.observing.metrics import WorkerMetrics
from worker.oktopost import OktopostClient
from worker.tasks.leases import LeaseKeeper
from worker.tasks.runtime import METRICS_FLUSH_SECONDS
from worker.tasks.work import TaskContext, TaskOutcome, verify_flow
from worker.upstream.budget import UpstreamBudget
from worker.upstream.clients import Upstreams
from worker.upstream.retry import RetryPolicy

WARM_UP_FLOWS = 100
PROFILE = {"Result": True, "Credential": {"Id": "1", "Name": "Jo", "Status": "valid", "Network": "LinkedIn"}}


@dataclass(frozen=True, slots=True)
class PerFlow:
    flows: int
    process_cpu_us: float
    redis_cpu_us: float
    redis_commands: float
    wall_us: float


def measure(url: str, flows: int) -> PerFlow:
    client = redis.Redis.from_url(url)
    names = RedisNames("onetask")
    store = FlowStore(client, names, Lifetimes(flow_ttl=600, token_ttl=300, lease=5))
    answers = httpx.MockTransport(lambda _request: httpx.Response(200, json=PROFILE))
    oktopost = OktopostClient("https://api.test", "acct", "key", transport=answers)
    budget = UpstreamBudget(client, names.account(store.default_account), 1_000_000, 1.0)
    metrics = WorkerMetrics(client, names.worker_metrics, METRICS_FLUSH_SECONDS)  # as a worker's
    context = TaskContext(
        store, Upstreams.single(oktopost, budget), RetryPolicy(), metrics, LeaseKeeper(store)
    )
    flow_ids = []
    for index in range(WARM_UP_FLOWS + flows):
        flow = store.create(f"flow-{index}", "LinkedIn", "profile", None, None)
        if not store.claim_callback(flow, f"591c6053d81978.{index:040d}").done:
            raise RuntimeError(f"flow-{index} was not claimed")
        flow_ids.append(flow.flow_id)
    try:
        for flow_id in flow_ids[:WARM_UP_FLOWS]:
            verify_flow(context, flow_id)
        spent, commands = redis_cpu(client), redis_commands(client)
        wall, cpu = time.perf_counter(), time.process_time()
        outcomes = [verify_flow(context, flow_id) for flow_id in flow_ids[WARM_UP_FLOWS:]]
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        spent, commands = redis_cpu(client) - spent, redis_commands(client) - commands
    finally:
        context.leases.stop()
        metrics.close()
    if any(outcome is not TaskOutcome.COMPLETED for outcome in outcomes):
        raise RuntimeError("a flow did not complete")
    return PerFlow(
        flows,
        round(cpu / flows * 1e6),
        round(spent / flows * 1e6),
        round(commands / flows, 1),
        round(wall / flows * 1e6),
    )


def redis_cpu(client: Any) -> float:  # Any: redis-py annotates commands as sync-or-async
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_commands(client: Any) -> int:
    # the INFO calls between two readings count too: a few in all, nothing per flow
    return sum(int(command["calls"]) for command in client.info("commandstats").values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.onetask", description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args(argv)
    if args.flows < 1:
        print("python -m bench.onetask: --flows must be at least 1", file=sys.stderr)
        return 2
    with private_redis("okc-onetask-") as url:
        result = measure(url, args.flows)
    print(f"{result.flows} flows, per flow: {costs(result)}")
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0


@contextmanager
def private_redis(prefix: str) -> Iterator[str]:
    """The URL of a private redis-server, as the benchmark starts one (its files under a temporary
    directory named by `prefix`); stopped on leaving."""
    with Children(Path(tempfile.mkdtemp(prefix=prefix))) as children:
        url, _ = start_redis(children)
        yield url


def costs(result: PerFlow) -> str:
    """What one flow (or callback) cost, in words."""
    return (
        f"our code {result.process_cpu_us:.0f} us of CPU, Redis {result.redis_cpu_us:.0f} us of CPU and "
        f"{result.redis_commands} commands, {result.wall_us:.0f} us"
    )


if __name__ == "__main__":
    sys.exit(main())
