"""The worker's background loops: started together, and stopped together at once, even a loop that waits
on an event of its own."""

from __future__ import annotations

import threading
import time

from worker.threads import BackgroundThreads


class TwoLoops(BackgroundThreads):
    def __init__(self) -> None:
        self.woken = threading.Event()
        self.rounds = 0
        super().__init__({"test-own-event": self._on_own_event, "test-stop-event": self._on_stop_event})

    def wake(self) -> None:
        self.woken.set()

    def _on_own_event(self) -> None:
        while not self._stop.is_set():
            self.rounds += 1
            self.woken.wait(60)  # without wake(), stop() would wait out its join

    def _on_stop_event(self) -> None:
        self._stop.wait(60)


def test_stop_wakes_every_loop_and_ends_its_thread_at_once() -> None:
    loops = TwoLoops()
    loops.start()
    time.sleep(0.05)
    assert {thread.name for thread in threading.enumerate()} >= {"test-own-event", "test-stop-event"}
    started = time.monotonic()
    loops.stop()
    assert time.monotonic() - started < 1.0
    assert not {thread.name for thread in threading.enumerate()} & {"test-own-event", "test-stop-event"}
    assert loops.rounds >= 1
