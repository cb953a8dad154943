"""A worker's graceful stop: on SIGTERM it hands back every flow it holds at once, then exits in time.

Celery's warm shutdown stops consuming and waits for every task under way, however long Oktopost takes,
and drops the tasks received but not started. Here, the moment the signal arrives:

- every flow the process holds (a task working on it, or its task received and not started) is handed
  back: its owner is fenced out and its task queued again in one step each (hand_back.lua, then
  requeue_lapsed.lua), so another worker takes it up within a second instead of after its lease lapses;
- a task that starts from then on (received late, or prefetched) hands its flow back instead of working;
- a task under way learns its flow is lost and stops at its next look; an Oktopost call under way may
  end within `grace` seconds (its outcome is fenced out), after which the process exits with status 0.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from worker.flows.store import FlowStore
from worker.tasks.leases import Held, LeaseKeeper
from worker.tasks.sweeper import TaskQueue, take_up

log = logging.getLogger(__name__)

HAND_BACK_SECONDS = 1.0  # how long the hand-back may take past a grace shorter than it (Redis slow)
HANDED_BACK = "handed_back"  # a task's result when its worker was stopping and gave its flow back


class GracefulStop:
    def __init__(self, store: FlowStore, tasks: TaskQueue, leases: LeaseKeeper, grace: float) -> None:
        self.store = store
        self.tasks = tasks
        self.leases = leases
        self.grace = grace
        self._requested = threading.Event()
        self._handed: set[str] = set()  # flows handed back already: a late task of one leaves it alone
        self._all_handed_back = threading.Event()

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def begin(self) -> None:
        """Called from the signal handler: the hand-back runs on a thread of its own, at once."""
        if self._requested.is_set():
            return
        self._requested.set()
        threading.Thread(target=self._hand_back_all, name="oktopost-stopping", daemon=True).start()
        threading.Thread(target=self._exit_after_grace, name="oktopost-grace", daemon=True).start()

    def hand_back_unstarted(self, flow_id: str) -> str:
        """A task starting while the worker stops: its flow goes back to the queue, untouched here."""
        if flow_id not in self._handed:
            self._hand_back(Held(flow_id, ""))
        return HANDED_BACK

    def _hand_back_all(self) -> None:
        held = self.leases.close(self._hand_back)
        try:
            for flow in held:
                self._hand_back(flow)
        finally:
            self._all_handed_back.set()
        log.warning("worker stopping: %d flows handed back, exiting within %gs", len(held), self.grace)

    def _hand_back(self, held: Held) -> None:
        held.mark_lost()  # a task under way stops at its next look; its transitions are fenced out
        self._handed.add(held.flow_id)
        try:
            if self.store.hand_back(held.flow_id, held.owner):
                take_up(self.store, self.tasks, held.flow_id)
                log.info("flow %s handed back", held.flow_id)
        except Exception as error:  # Redis away: the lease lapses and a sweeper takes the flow up
            log.warning("flow %s not handed back: %s", held.flow_id, type(error).__name__)

    def _exit_after_grace(self) -> None:
        ends = time.monotonic() + self.grace
        self._all_handed_back.wait(self.grace + HAND_BACK_SECONDS)  # never exit before the hand-back
        threading.Event().wait(max(0.0, ends - time.monotonic()))
        log.warning("worker stopping: grace of %gs over, exiting", self.grace)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # threads still blocked in a call cannot be joined; their flows are already back
