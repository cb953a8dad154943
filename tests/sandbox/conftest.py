"""Fixtures of the sandbox tests: one sandbox process, reset before each test, and a client of it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.sandboxes import RunningSandbox


@pytest.fixture(scope="session")
def shared_sandbox() -> Iterator[RunningSandbox]:
    """One sandbox for most tests; `sandbox` resets it before each one."""
    running = RunningSandbox()
    yield running
    running.stop()


@pytest.fixture
def sandbox(shared_sandbox: RunningSandbox) -> RunningSandbox:
    shared_sandbox.reset()
    return shared_sandbox


@pytest.fixture
def api(sandbox: RunningSandbox) -> Iterator[httpx.Client]:
    """A keep-alive client with the sandbox's default credentials."""
    with sandbox.client() as client:
        yield client
