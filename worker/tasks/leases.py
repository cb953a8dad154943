"""A worker process's heartbeat on the flows its tasks work on: one thread renews every held lease.

A task holds its flow's work under a lease (see `FlowStore.take_work`). While the process lives, this
thread renews the leases of all its tasks every `interval`, whatever each task is doing (waiting for
budget, sleeping before a retry, blocked in a call that takes longer than expected), in one Redis call.
A process that dies, hangs or is paused renews nothing, so its leases lapse and the sweeper hands the
flows to other workers within a lease. A task whose lease lapsed anyway learns it here: the renewal
finds another owner, the task is told, and it stops (its transitions are fenced out in any case).

A flow whose task the process has received from the broker but not started yet (prefetched) is held
too, with the owner "" it was queued with (`expect`): a paused process lets that lease lapse like the
others, so the flow is taken up within a quarter of the token's life, not after the longer lease of
queued work; it is renewed so once it has waited RECEIVED_SETTLE_SECONDS for a thread (a task that
starts at once takes its lease itself, and costs no renewal). When the process stops, `close` ends the
renewals and hands every held flow to a callback (worker.tasks.stopping), and so does `hold` from then
on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from worker.flows.store import FlowStore

log = logging.getLogger(__name__)

RECEIVED_RENEWAL_GAP = 0.1  # seconds between two renewals, however fast tasks are received
RECEIVED_SETTLE_SECONDS = 0.1  # a received task's lease is renewed early if it has not started by then


class WorkLost(Exception):
    """The task's flow was taken up by another task (its lease lapsed): stop working on it."""


class Held:
    """One task's hold on one flow's work."""

    def __init__(self, flow_id: str, owner: str, received: bool = False) -> None:
        self.flow_id = flow_id
        self.owner = owner
        self.received = received  # its task received and not started (`LeaseKeeper.expect`)
        # set by the heartbeat's thread, read by the task's: a plain attribute, as nothing waits for it
        # (a threading.Event would cost every task a Condition and its lock)
        self._lost = False

    @property
    def lost(self) -> bool:
        return self._lost

    def mark_lost(self) -> None:
        self._lost = True

    def check(self) -> None:
        """Raises WorkLost once the flow's work belongs to another task."""
        if self._lost:
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
        self._closing: Callable[[Held], None] | None = None
        self._received = threading.Event()  # a task was received: its flow's lease is renewed soon

    @contextmanager
    def hold(self, flow_id: str, owner: str) -> Iterator[Held]:
        """Keeps the flow's lease alive until the block ends."""
        held = Held(flow_id, owner)
        with self._lock:
            self._held[flow_id] = held
            self._start()
            closing = self._closing
        if closing is not None:  # the process stops: the flow goes back at once
            closing(held)
        try:
            yield held
        finally:
            with self._lock:
                if self._held.get(flow_id) is held:
                    del self._held[flow_id]

    def expect(self, flow_id: str, owner: str = "") -> None:
        """The process received the flow's task and has not started it: its queued lease (or the lease
        of `owner`, whose take was sent with the task's receipt) is renewed as a working one, unless a
        task of this process holds the flow already."""
        with self._lock:
            if self._closing is None and flow_id not in self._held:
                self._held[flow_id] = Held(flow_id, owner, received=True)
                self._start()
                self._received.set()

    def started(self, flow_id: str) -> None:
        """A received task starts (or is revoked): from now its flow is held only by the task, if it
        takes the work."""
        with self._lock:
            held = self._held.get(flow_id)
            if held is not None and held.received:
                del self._held[flow_id]

    def close(self, hand_back: Callable[[Held], None]) -> list[Held]:
        """No lease is renewed any more; returns the flows held now, and `hand_back` gets each flow
        held from now on."""
        with self._lock:
            self._closing = hand_back
            return list(self._held.values())

    def renew(self) -> None:
        """One round of renewals (the thread's, and a test's)."""
        with self._lock:
            if self._closing is not None:
                return
            held = dict(self._held)
        lost = self.store.renew_leases({flow_id: h.owner for flow_id, h in held.items()})
        for flow_id in lost:
            held[flow_id].mark_lost()
        with self._lock:  # a received task's flow taken up elsewhere, or ended: no longer watched here
            for flow_id in lost:
                if held[flow_id].received and self._held.get(flow_id) is held[flow_id]:
                    del self._held[flow_id]

    def stop(self) -> None:
        self._stop.set()
        self._received.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="oktopost-leases", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        due = time.monotonic() + self.interval
        while True:
            received = self._received.wait(max(0.0, due - time.monotonic()))
            self._received.clear()
            # a task received while a thread is free starts at once and takes its flow's lease itself:
            # only a received task still waiting for a thread after this has its lease renewed early
            if received and self._stop.wait(RECEIVED_SETTLE_SECONDS):
                return
            if self._stop.is_set():
                return
            if time.monotonic() < due and not self._waiting_to_start():
                continue
            try:
                self.renew()
            except Exception as error:  # Redis away: renew again next round; leases outlive a few rounds
                log.warning("lease renewal failed: %s", type(error).__name__)
            due = time.monotonic() + self.interval
            if self._stop.wait(RECEIVED_RENEWAL_GAP):  # tasks arrive in bursts: one renewal a burst
                return

    def _waiting_to_start(self) -> bool:
        with self._lock:
            return any(held.received for held in self._held.values())
