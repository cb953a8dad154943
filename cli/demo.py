"""`oktopost-connect demo`: the stack on free ports, then a profile flow and a page flow driven end to end
(cli.demo_flows) while a Redis subscriber prints every event.

It exits 0 only when both flows end with `connection.completed`. Tokens and keys are never printed.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import redis

from cli.demo_flows import Console, DemoFailed, FlowRun, confirmed_upstream, drive
from cli.embedded_redis import RedisKind
from cli.processes import free_port
from cli.stack import LaunchError, Stack, StackOptions, StopSignal, start_stack

FLOW_TIMEOUT = 60.0  # seconds both flows get, from the first request to their terminal events


@dataclass
class DemoOptions:
    timeout: float = FLOW_TIMEOUT
    redis: RedisKind | None = None
    concurrency: int = 8


def stack_options(options: DemoOptions, log_dir: Path) -> StackOptions:
    """Free ports, the sandbox always, a channel prefix and a worker name of its own."""
    tag = uuid.uuid4().hex[:8]
    return StackOptions(
        shim_port=free_port(),
        sandbox_port=free_port(),
        concurrency=options.concurrency,
        with_sandbox=True,
        redis=options.redis,
        log_dir=log_dir,
        override_env=True,
        worker_name=f"demo-{tag}@%h",
        # the demo never talks to the real Oktopost, so it never needs (or sees) a real key
        extra_env={
            "CHANNEL_PREFIX": f"demo-{tag}",
            "OKTOPOST_ACCOUNT_ID": "demo-account",
            "OKTOPOST_API_KEY": "demo-key",
            "SHIM_API_KEYS": f"demo-{uuid.uuid4().hex}",
            "LOG_FORMAT": "text",
        },
    )


def run_demo(options: DemoOptions, out: IO[str] = sys.stdout) -> int:
    began = time.monotonic()
    stop = StopSignal()
    stop.install()
    log_dir = Path(tempfile.mkdtemp(prefix="okc-demo-"))
    try:
        stack = start_stack(stack_options(options, log_dir))
    except LaunchError as error:
        shutil.rmtree(log_dir, ignore_errors=True)
        print(f"oktopost-connect demo: {error}", file=sys.stderr)
        return 2
    console = Console(out)
    failure = ""
    try:
        demonstrate(stack, options, console, stop, began)
    except DemoFailed as error:
        failure = str(error)
    except (httpx.HTTPError, redis.exceptions.RedisError) as error:
        failure = f"{type(error).__name__}: {error}"
    finally:
        if failure:
            console.mute()
            print(f"oktopost-connect demo: failed: {failure} (logs: {log_dir})", file=sys.stderr, flush=True)
        stack.stop()
    if not failure:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if failure else 0


def demonstrate(stack: Stack, options: DemoOptions, console: Console, stop: StopSignal, began: float) -> None:
    """Wait for the stack, drive both flows, print the summary; DemoFailed with the reason if not."""
    out = console.out
    print(f"oktopost-connect demo: redis {stack.redis.describe()}", file=out)
    where = f"sandbox {stack.sandbox_url}, shim {stack.shim_url}, events on {stack.prefix}:flow:<id>"
    print(f"  {where}", file=out)
    try:
        stack.wait_until_ready(stop=stop)
    except LaunchError as error:
        raise DemoFailed(str(error)) from None
    ready = time.monotonic() - began
    print(f"  started in {ready:.2f}s; driving a profile flow and a page flow", file=out, flush=True)

    def interrupted() -> str | None:
        if stop.requested:
            return f"stopped by {stop.name}"
        exited = stack.exited_child()
        return exited.exit_reason() if exited is not None else None

    console.origin = time.monotonic()
    runs = drive(stack, console, options.timeout, interrupted)
    reported, confirmed = confirmed_upstream(stack, runs)
    print_summary(runs, out)
    print(f"  the sandbox lists {confirmed} of the {reported} reported credentials as connected", file=out)
    if confirmed != reported:
        raise DemoFailed(f"only {confirmed} of {reported} reported credentials are connected upstream")
    print(
        f"  total {time.monotonic() - began:.2f}s (start {ready:.2f}s, flows {console.offset():.2f}s)",
        file=out,
        flush=True,
    )


def print_summary(runs: list[FlowRun], out: IO[str]) -> None:
    print("summary:", file=out)
    for run in runs:
        credentials = len(run.events[-1]["data"]["credentials"])
        print(
            f"  {run.label:8} {run.network:9} {run.short_id}  connection.completed in"
            f" {run.ended_at - run.started_at:.2f}s, {len(run.events)} events,"
            f" {credentials} credential(s)",
            file=out,
        )
