"""The sentinels' password (REDIS_SENTINEL_PASSWORD) is in the worker's broker transport options, which
Celery's `stats` reports as they are: `celery inspect stats`, and with it Flower's worker page and
/api/workers, show it masked. Real processes: a redis-server, a sentinel that requires the password, a
worker that finds its broker through it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cli.processes import start_redis_server
from cli.processes.children import Child, stop_children
from cli.processes.readiness import start_on_free_port
from tests.support.processes import start_cli
from tests.support.stack import pipeline_env
from worker.queueing.stats import MASK

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(90)]

MASTER = "okc-stats"
PASSWORD = "sentinel-pw-" + secrets.token_hex(8)


def _sentinel(home: Path, primary_port: int, port: int) -> Child:
    config = home / f"sentinel-{port}.conf"  # a sentinel rewrites its own file
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {home}\nrequirepass {PASSWORD}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 1\n"
    )
    return Child("sentinel", ["redis-server", str(config), "--sentinel"], log_path=home / f"{port}.log")


def test_the_workers_stats_show_the_sentinel_password_masked() -> None:
    primary = start_redis_server()
    home = Path(tempfile.mkdtemp(prefix="okc-sentinel-stats-"))
    sentinel: Child | None = None
    worker = None
    try:
        sentinel, port = start_on_free_port(lambda free: _sentinel(home, primary.port, free))
        env = pipeline_env(
            f"redis://127.0.0.1:{primary.port}/0",
            "http://127.0.0.1:9",
            9,
            redis_sentinels=f"127.0.0.1:{port}",
            redis_sentinel_master=MASTER,
            redis_sentinel_password=PASSWORD,
        )
        worker = start_cli(["worker", "--concurrency", "2", "--hostname", "stats@%h"], env=env)
        inspect = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "inspect",
            "stats",
            "--json",
            "--timeout",
            "2",
        ]
        environ = {**os.environ, **env}
        deadline = time.monotonic() + 45
        while True:
            answer = subprocess.run(
                inspect, env=environ, capture_output=True, text=True, timeout=30, check=False
            )
            if answer.returncode == 0 and "transport_options" in answer.stdout:
                break
            assert time.monotonic() < deadline, answer.stdout + answer.stderr
            time.sleep(0.5)
        assert PASSWORD not in answer.stdout + answer.stderr
        (stats,) = json.loads(answer.stdout).values()
        options = stats["broker"]["transport_options"]
        assert options["master_name"] == MASTER  # the stats do come through the sentinel
        assert options["sentinel_kwargs"]["password"] == MASK
    finally:
        if worker is not None:
            worker.stop()
        stop_children([child for child in (sentinel,) if child is not None], timeout=5)
        primary.stop(timeout=5)
        shutil.rmtree(home, ignore_errors=True)
