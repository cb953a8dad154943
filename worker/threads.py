"""The loops a worker process runs in threads beside its tasks (the sweeper, the unparker, the webhook
dispatcher), started and stopped with the worker the same way."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

JOIN_SECONDS = 5.0  # how long `stop()` waits for each thread; a daemon thread left over dies with the process


class BackgroundThreads:
    """Base of a component whose loops run in daemon threads, one per `loops` item (thread name -> loop).
    Each loop ends once `_stop` is set: `stop()` sets it, wakes the loops (`wake`) and joins them."""

    def __init__(self, loops: Mapping[str, Callable[[], None]]) -> None:
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=loop, name=name, daemon=True) for name, loop in loops.items()
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        for thread in self._threads:
            thread.join(timeout=JOIN_SECONDS)

    def wake(self) -> None:
        """Interrupts a loop waiting on something other than `_stop`; nothing to do when none does."""
