"""A worker's graceful stop: on SIGTERM it hands back every flow it holds at once, then exits in time.

Celery's warm shutdown stops consuming and waits for every task under way, however long Oktopost takes,
and drops the tasks received but not started. Here, the moment the signal arrives:

- every flow the process holds (a task working on it, or its task received and not started) is handed
  back: its owner is fenced out and its task queued again in one step each (hand_back.lua, then
  requeue_lapsed.lua), so another worker takes it up within a second instead of after its lease lapses;
- a task that starts from then on (received late, or prefetched) hands its flow back instead of working;
- a task under way learns its flow is lost and stops at its next look; an Oktopost call under way may
  end within `grace` seconds (its outcome is fenced out), after which the process exits with status 0;
- a task queued again may still be popped by this very process: a fetch from the broker that was under
  way when the signal came (a blocking pop) takes the first message pushed, and that message then dies
  with the process, its flow waiting for its queued lease to lapse. The same holds for a task another
  worker's sweeper queued for a flow handed back here (its lease lapsed with the hand-back, and that
  sweeper may look first). So while the grace lasts, every flow handed back from here that no task has
  taken a moment later is queued once more (at most RETAKES times; a duplicate task is fenced out by
  the take), whoever queued it the first time. A task of such a flow that starts here (its fetch came
  back with it) queues it again at once. Celery's shutdown may end before those looks (its last task
  done a moment after the signal): the process waits for them (`wait`), within the grace.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from worker.flows.store import FlowStore
from worker.observing import tracing
from worker.tasks.leases import Held, LeaseKeeper
from worker.tasks.sweeper import TaskQueue, take_up

log = logging.getLogger(__name__)

HAND_BACK_SECONDS = 1.0  # how long the hand-back may take past a grace shorter than it (Redis slow)
HANDED_BACK = "handed_back"  # a task's result when its worker was stopping and gave its flow back
RETAKE_AFTER = 0.25  # seconds after which a flow handed back and not taken by any task is queued again
RETAKES = 2  # at most this many times a flow (a busy deployment's queue is slow, not lost)


class GracefulStop:
    def __init__(
        self,
        store: FlowStore,
        tasks: TaskQueue,
        leases: LeaseKeeper,
        grace: float,
        exit_process: Callable[[int], object] = os._exit,
    ) -> None:
        self.store = store
        self.exit_process = exit_process  # at the grace's end; threads blocked in a call cannot be joined
        self.tasks = tasks
        self.leases = leases
        self.grace = grace
        self._requested = threading.Event()
        self._handed: set[str] = set()  # flows handed back already: a late task of one leaves it alone
        self._handed_back: list[str] = []  # flows handed back from here, queued again here or elsewhere
        self._all_handed_back = threading.Event()
        self._handing_back: threading.Thread | None = None
        self._began = 0.0

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def begin(self) -> None:
        """Called from the signal handler: the hand-back runs on a thread of its own, at once."""
        if self._requested.is_set():
            return
        self._requested.set()
        self._began = time.monotonic()
        self._handing_back = threading.Thread(
            target=self._hand_back_all, name="oktopost-stopping", daemon=True
        )
        self._handing_back.start()
        threading.Thread(target=self._exit_after_grace, name="oktopost-grace", daemon=True).start()

    def hand_back_unstarted(self, flow_id: str, owner: str = "") -> str:
        """A task starting while the worker stops: its flow goes back to the queue, untouched here (with
        `owner`, the flow its early take took, whether or not it was handed back already). A flow handed
        back from here before is this task's own flow queued again and fetched here: queued once more
        when no task has it."""
        if owner or flow_id not in self._handed:
            self._hand_back(Held(flow_id, owner))
        else:
            self._queue_again_if_untaken(flow_id)
        return HANDED_BACK

    def wait(self) -> None:
        """Until the hand-back and its looks for flows no task took are done (within the grace): the
        process must not exit before them, however soon Celery's own shutdown is over."""
        if self._handing_back is not None:
            self._handing_back.join(max(0.0, self._began + self.grace - time.monotonic()))

    def _hand_back_all(self) -> None:
        held = self.leases.close(self._hand_back)
        try:
            for flow in held:
                self._hand_back(flow)
        finally:
            self._all_handed_back.set()
        log.warning("worker stopping: %d flows handed back, exiting within %gs", len(held), self.grace)
        self._queue_again_untaken()

    def _queue_again_untaken(self) -> None:
        """While the grace lasts: a flow handed back that no task has taken RETAKE_AFTER later went to a
        fetch of this process (see the module's docstring), so it is queued again."""
        ends = time.monotonic() + self.grace
        for _ in range(RETAKES):
            if not self._handed_back or time.monotonic() + RETAKE_AFTER >= ends:
                return
            threading.Event().wait(RETAKE_AFTER)
            for flow_id in list(self._handed_back):
                self._queue_again_if_untaken(flow_id)

    def _queue_again_if_untaken(self, flow_id: str) -> None:
        try:
            if self.store.untaken(flow_id):
                self.store.lapse_lease(flow_id)  # a flow parked meanwhile has no lease: it stays parked
                if take_up(self.store, self.tasks, flow_id):
                    log.info("flow %s handed back again: no task took it", flow_id)
        except Exception as error:  # Redis away: its lease lapses and a sweeper takes it up
            log.warning("flow %s not handed back again: %s", flow_id, type(error).__name__)

    def _hand_back(self, held: Held) -> None:
        held.mark_lost()  # a task under way stops at its next look; its transitions are fenced out
        self._handed.add(held.flow_id)
        try:
            if self.store.hand_back(held.flow_id, held.owner):
                # watched whoever queues it: another worker's sweeper may see the lapsed lease first
                self._handed_back.append(held.flow_id)
                take_up(self.store, self.tasks, held.flow_id)
                log.info("flow %s handed back", held.flow_id)
        except Exception as error:  # Redis away: the lease lapses and a sweeper takes the flow up
            log.warning("flow %s not handed back: %s", held.flow_id, type(error).__name__)

    def _exit_after_grace(self) -> None:
        ends = time.monotonic() + self.grace
        self._all_handed_back.wait(self.grace + HAND_BACK_SECONDS)  # never exit before the hand-back
        threading.Event().wait(max(0.0, ends - time.monotonic()))
        log.warning("worker stopping: grace of %gs over, exiting", self.grace)
        tracing.finish()  # the calls still hanging end as stopped; the last spans go (a second at most)
        sys.stdout.flush()
        sys.stderr.flush()
        self.exit_process(0)  # threads still blocked in a call cannot be joined; their flows are already back
