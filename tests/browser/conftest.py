"""A real Chromium and a real stack (private Redis, sandbox, shim, worker, the partner's return page) for
the hosted-journey tests; each is stopped however a test ends."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from playwright.sync_api import Browser, BrowserContext, sync_playwright

from tests.support.browsers import VIEWPORT
from tests.support.journey import Browsing, HostedStack, start_hosted_stack
from tests.support.stack import RedisServer

# a laptop-sized window; the narrow-screen test sets its own


@pytest.fixture(scope="package")
def chromium() -> Iterator[Browser]:
    """Debian's chromium under Playwright. Missing, it fails the tests: scripts/test installs it."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(
            "no `chromium` on PATH: install Debian's (apt-get install -y chromium), as scripts/test does"
        )
    # Chromium refuses to start its sandbox as root (CI and these machines run as root)
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=args)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="package")
def stack(redis_server: RedisServer) -> Iterator[HostedStack]:
    with ExitStack() as resources:
        yield start_hosted_stack(redis_server, resources)


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile: no cookies from another test."""
    context = chromium.new_context(viewport=VIEWPORT)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def browsing(context: BrowserContext) -> Browsing:
    return Browsing(context.new_page())
