"""Shared fixtures: a private real Redis, a sandbox, and the pipeline (shim + worker) as real processes;
the in-process shim on fakeredis of the shim and webhook tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.shim import Shim, open_shim
from tests.support.stack import (
    Pipeline,
    RedisServer,
    Sandbox,
    start_pipeline,
    start_redis,
    start_sandbox,
    stop_redis,
)

# the parallel run's scheduling and `alone` turns; the fault suite's figures, gathered from every worker
pytest_plugins = ["tests.parallel", "tests.support.fault_report"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of our own on a free port (isolated from anything else on 6379), else REDIS_URL."""
    if shutil.which("redis-server") is None:
        url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
        yield RedisServer(url, int(url.split(":")[2].split("/")[0]))
        return
    server = start_redis()
    yield server
    stop_redis(server)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    server = start_sandbox()
    yield server
    server.process.stop()


@pytest.fixture(scope="session")
def pipeline(redis_server: RedisServer, sandbox: Sandbox) -> Iterator[Pipeline]:
    running = start_pipeline(redis_server.url, sandbox.url)
    yield running
    running.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def shim() -> AsyncIterator[Shim]:
    """The shim in this process on fakeredis, its Oktopost a recording stand-in (tests/support/shim.py)."""
    async with open_shim() as shim:
        yield shim
