"""A worker process's heartbeat on the flows its tasks work on: one thread renews every held lease.

A task holds its flow's work under a lease (see `FlowStore.take_work`). While the process lives, this
thread renews the leases of all its tasks every `interval`, whatever each task is doing (waiting for
budget, sleeping before a retry, blocked in a call that takes longer than expected), in one Redis call.
A process that dies, hangs or is paused renews nothing, so its leases lapse and the sweeper hands the
flows to other workers within a lease. A task whose lease lapsed anyway learns it here: the renewal
finds another owner, the task is told, and it stops (its transitions are fenced out in any case).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from worker.flows.store import FlowStore

log = logging.getLogger(__name__)


class WorkLost(Exception):
    """The task's flow was taken up by another task (its lease lapsed): stop working on it."""


class Held:
    """One task's hold on one flow's work."""

    def __init__(self, flow_id: str, owner: str) -> None:
        self.flow_id = flow_id
        self.owner = owner
        self._lost = threading.Event()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def mark_lost(self) -> None:
        self._lost.set()

    def check(self) -> None:
        """Raises WorkLost once the flow's work belongs to another task."""
        if self._lost.is_set():
            raise WorkLost(f"flow {self.flow_id} was taken up by another task")


class LeaseKeeper:
    def __init__(self, store: FlowStore, interval: float | None = None) -> None:
        self.store = store
        # a few renewals per lease, so that one lost to a Redis hiccup is made up in time
        self.interval = interval or min(5.0, max(0.25, store.lifetimes.lease / 4))
        self._held: dict[str, Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def hold(self, flow_id: str, owner: str) -> Iterator[Held]:
        """Keeps the flow's lease alive until the block ends."""
        held = Held(flow_id, owner)
        with self._lock:
            self._held[flow_id] = held
            self._start()
        try:
            yield held
        finally:
            with self._lock:
                if self._held.get(flow_id) is held:
                    del self._held[flow_id]

    def renew(self) -> None:
        """One round of renewals (the thread's, and a test's)."""
        with self._lock:
            held = dict(self._held)
        lost = self.store.renew_leases({flow_id: h.owner for flow_id, h in held.items()})
        for flow_id in lost:
            held[flow_id].mark_lost()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="oktopost-leases", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except Exception as error:  # Redis away: renew again next round; leases outlive a few rounds
                log.warning("lease renewal failed: %s", type(error).__name__)
