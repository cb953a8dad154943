"""Celery's task events for the flow tasks (verify, complete), sent by the worker itself.

Flower shows a task from its events: task-sent (published with the task's message, by the shim's claim or a
selection), then task-received, task-started and task-succeeded (or task-failed, task-revoked) from the
worker. Celery's own cost a flow about 0.2-0.5 ms of the worker's CPU at load (docs/benchmarks.md, cut 9):
each event is built by the consumer's dispatcher, wakes the worker's consumer thread from the task's thread,
and goes out in a publish of its own, made by that thread while the task runs. The flow tasks turn Celery's
off (`send_events=False` on the task: Celery's other events, its workers' heartbeats and the other tasks'
events, are untouched), and a `TaskEvents` sends the same events, with the fields Celery gives them: each is a
dict appended to a list, and a thread of its own publishes what gathered, at most BATCH_SECONDS after the
first, in one message on the event exchange, as Celery's dispatcher publishes a buffered group (routing key
"task.multi", a list of events). Flower's receiver reads it as it reads Celery's. Events are monitoring: a
batch that Redis refuses is dropped (a warning is logged), as a worker that dies drops the events it had not
published yet.

The thread is woken by the first event after it went to rest, and from then on it looks every BATCH_SECONDS
by itself, until a look finds nothing gathered: then it rests again. So while flows keep coming no event
wakes it (a flow's first, task-received, is sent by the consumer thread just before it hands the task to a
thread of the pool: a thread woken then would take the interpreter's lock in between), and a quiet worker's
thread sleeps.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from typing import Any

from celery import Celery
from celery.events import EventDispatcher
from celery.utils.saferepr import saferepr
from celery.utils.time import utcoffset
from kombu.utils.encoding import safe_repr, safe_str

from worker.observing.redaction import redact

log = logging.getLogger(__name__)

# How late a task's events may reach Flower; what gathers meanwhile goes out in one publish. Celery's
# own dispatcher publishes a buffered event at its consumer's next turn, a few milliseconds later.
BATCH_SECONDS = 0.05
ROUTING_KEY = "task.multi"  # Celery's routing key of a buffered group of task events
RESULT_REPR_SIZE = 1024  # the task's result as Celery shows it: its repr, cut to this many characters


class TaskEvents:
    """The task events of one worker process, named by its Celery node `hostname`."""

    def __init__(self, app: Celery, hostname: str, batch_seconds: float = BATCH_SECONDS) -> None:
        self.app = app
        self.hostname = hostname
        self.batch_seconds = batch_seconds
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._due = threading.Event()  # set by the first event after the thread went to rest
        self._looking = False  # the thread looks for events by itself, every batch_seconds
        self._closed = threading.Event()
        self._publishing = threading.Lock()
        self._dispatcher: EventDispatcher | None = None
        self._failing = False
        self._thread: threading.Thread | None = None

    def received(self, request: Any) -> None:
        """task-received, from the worker's Request as Celery's strategy sends it."""
        eta, expires = request.eta, request.expires
        self._send(
            "task-received",
            uuid=request.id,
            name=request.name,
            args=request.argsrepr,
            kwargs=request.kwargsrepr,
            root_id=request.root_id,
            parent_id=request.parent_id,
            retries=request.request_dict.get("retries", 0),
            eta=eta and eta.isoformat(),
            expires=expires and expires.isoformat(),
        )

    def started(self, task_id: str) -> None:
        self._send("task-started", uuid=task_id)

    def succeeded(self, task_id: str, result: object, runtime: float) -> None:
        self._send("task-succeeded", uuid=task_id, result=saferepr(result, RESULT_REPR_SIZE), runtime=runtime)

    def failed(self, task_id: str, error: BaseException) -> None:
        """task-failed with the exception's repr and the traceback being handled, as Celery's, with any
        token, Authorization value or registered secret in them masked (Flower shows both)."""
        self._send(
            "task-failed",
            uuid=task_id,
            exception=redact(safe_repr(error)),
            traceback=redact(safe_str(traceback.format_exc())),
        )

    def revoked(self, task_id: str, terminated: bool, signum: int | None, expired: bool) -> None:
        self._send("task-revoked", uuid=task_id, terminated=terminated, signum=signum, expired=expired)

    def flush(self) -> None:
        """Publishes what gathered now (the last at `close`, and a test's)."""
        self._publish_gathered()

    def close(self) -> None:
        """Stops the thread and publishes what is left (a worker stopping)."""
        self._closed.set()
        self._due.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.flush()
        with self._publishing:
            self._disconnect()

    def _send(self, type_: str, **fields: Any) -> None:
        event = {
            "hostname": self.hostname,
            "pid": self.pid,
            "clock": self.app.clock.forward(),
            **fields,
            "timestamp": time.time(),
            "type": type_,
        }
        with self._lock:
            self._events.append(event)
            wake, self._looking = not self._looking, True
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._run, name="oktopost-task-events", daemon=True)
                self._thread.start()
        if wake:
            self._due.set()

    def _run(self) -> None:
        while not self._closed.is_set():
            self._due.wait()
            self._due.clear()
            while not self._closed.wait(self.batch_seconds):  # close() flushes what is left
                if not self._publish_gathered():
                    break

    def _publish_gathered(self) -> bool:
        """The thread's look: publishes what gathered since its last and goes on looking (True), or,
        nothing having gathered, rests until an event wakes it (False)."""
        with self._lock:
            batch, self._events = self._events, []
            if not batch:
                self._looking = False
                return False
        self._publish(batch)
        return True

    def _publish(self, batch: list[dict[str, Any]]) -> None:
        offset = utcoffset()  # as Celery's events carry it: the local time's offset, in hours
        for event in batch:
            event["utcoffset"] = offset
        with self._publishing:
            try:
                dispatcher = self._dispatcher or self._connect()
                assert dispatcher.producer is not None  # an enabled dispatcher has its producer
                dispatcher.producer.publish(
                    batch,
                    routing_key=ROUTING_KEY,
                    exchange=dispatcher.exchange.name,
                    declare=[dispatcher.exchange],
                    serializer=dispatcher.serializer,
                    headers=dispatcher.headers,
                    delivery_mode=dispatcher.delivery_mode,
                    retry=False,
                )
            except Exception as error:  # the broker away: these events are lost, the tasks are not
                if not self._failing:
                    log.warning("%d task events not published: %s", len(batch), type(error).__name__)
                self._failing = True
                self._disconnect()
                return
            self._failing = False

    def _connect(self) -> EventDispatcher:
        """A dispatcher used for its producer, exchange and headers only: the events are built here."""
        connection = self.app.connection_for_write()
        self._dispatcher = self.app.events.Dispatcher(
            connection, hostname=self.hostname, enabled=True, buffer_while_offline=False
        )
        return self._dispatcher

    def _disconnect(self) -> None:
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            try:
                dispatcher.close()
                if dispatcher.connection is not None:
                    dispatcher.connection.release()
            except Exception as error:  # its connection was broken already
                log.debug("task events' connection not closed cleanly: %s", type(error).__name__)
