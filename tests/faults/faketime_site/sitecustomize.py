"""Loaded first by the children tests/faults/test_skewed_clocks.py runs under libfaketime.

libfaketime 0.9.10, its monotonic clock left true, fails Python's time.sleep (an absolute-time
clock_nanosleep) with EINVAL, and with that clock faked every timed wait on a lock hangs. A sleep on a
condition variable keeps the true monotonic clock and works: time.sleep is made one.
"""

import threading
import time
from typing import SupportsIndex

_NEVER_SET = threading.Event()


def _sleep(seconds: float | SupportsIndex) -> None:
    length = float(seconds)
    if length < 0:
        raise ValueError("sleep length must be non-negative")
    _NEVER_SET.wait(length)


time.sleep = _sleep
