"""The sweeper: ends flows whose deadline passed and takes up flows whose work stopped showing progress.

It runs as a thread in every worker process. Deadlines are enforced here, not by Celery's `expires`
(which is not carried to retries, celery #3297), so a flow that never sees its callback, a token that
dies mid-verification and a selection that never comes all end within a second of their deadline,
even when no request touches the flow again. Several sweepers are safe: each transition is atomic and a
lapsed lease is taken by exactly one of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from worker.flow import WORKING_STATES, FlowState
from worker.store import FlowStore
from worker.work import TaskOutcome, expire_flow

log = logging.getLogger(__name__)

Enqueue = Callable[[str, FlowState], None]


def sweep_once(store: FlowStore, enqueue: Enqueue, now: float | None = None) -> tuple[int, int]:
    """One pass; returns (flows expired, flows taken up again)."""
    now = time.time() if now is None else now
    expired = sum(
        expire_flow(store, flow_id, now) is TaskOutcome.EXPIRED for flow_id in store.due_deadlines(now)
    )
    requeued = 0
    for flow_id in store.due_leases(now):
        flow = store.get(flow_id)
        if flow is None or flow.state not in WORKING_STATES:
            store.forget_lease(flow_id)
            continue
        if store.take_lapsed_lease(flow_id, now):
            log.warning("flow %s: no progress from its worker, queued again", flow_id)
            enqueue(flow_id, flow.state)
            requeued += 1
    return expired, requeued


HEARTBEAT_SECONDS = 1.0  # how often a worker's sweeper says the worker is consuming


class Sweeper:
    """`name`: the worker's node name, marked alive in Redis each HEARTBEAT_SECONDS (`up` waits for it)."""

    def __init__(
        self, store: FlowStore, enqueue: Enqueue, interval: float = 0.25, name: str | None = None
    ) -> None:
        self.store = store
        self.enqueue = enqueue
        self.interval = interval
        self.name = name
        self._beat_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oktopost-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.name is not None:
            try:
                self.store.redis.zrem(self.store.names.workers, self.name)
            except Exception as error:  # Redis away at shutdown: the mark ages out by itself
                log.debug("worker mark not removed: %s", type(error).__name__)

    def _beat(self) -> None:
        now = time.time()
        if self.name is not None and now - self._beat_at >= HEARTBEAT_SECONDS:
            self.store.redis.zadd(self.store.names.workers, {self.name: now})
            self._beat_at = now

    def _run(self) -> None:
        while True:
            try:
                self._beat()
                sweep_once(self.store, self.enqueue)
            except Exception as error:  # Redis away: keep sweeping once it is back
                log.warning("sweep failed: %s", type(error).__name__)
                self._stop.wait(1.0)
            if self._stop.wait(self.interval):
                return
