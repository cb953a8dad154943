"""The suite on two pytest-xdist workers (pyproject's addopts): which tests share a worker, and tests
marked `alone` (tight wall-clock bounds) run while the other worker runs nothing.

Without xdist (`-n 0`, `-p no:xdist`) none of this does anything.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BROWSER_PACKAGE = "tests/browser/"


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, except that the browser package is one unit: its Chromium and its stack are
    package-scoped, so splitting its files between workers would start them twice."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileOrBrowserPackage(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(BROWSER_PACKAGE):
                return BROWSER_PACKAGE
            return super()._split_scope(nodeid)

    return FileOrBrowserPackage(config, log)


# optional: a hook of xdist's, unknown to pytest when xdist is not loaded
pytest_xdist_make_scheduler = pytest.hookimpl(optionalhook=True)(pytest_xdist_make_scheduler)


@contextlib.contextmanager
def turn(directory: Path, alone: bool) -> Iterator[None]:
    """A shared turn for any test, an exclusive one for an `alone` test. Whoever waits for its turn
    holds the gate meanwhile, so the other worker cannot start test after test and keep an `alone`
    test waiting for ever."""
    with (directory / "okc-gate.lock").open("a") as gate, (directory / "okc-turns.lock").open("a") as turns:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(turns, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(turns, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Around setup, call and teardown (module and session fixtures starting and stopping processes
    included), outermost so that pytest-timeout's clock starts once the turn is ours."""
    workerinput = getattr(item.config, "workerinput", None)
    basetemp = item.config.getoption("basetemp", None)
    if workerinput is None or basetemp is None:
        yield
        return
    # every worker's basetemp is a directory of the controller's own: shared by this run's workers only
    with turn(Path(basetemp).parent, alone=item.get_closest_marker("alone") is not None):
        yield
