"""The Enqueuer: which task works on a flow in which state, and how that task reaches the broker.

A transition that makes work (a callback's claim, a submitted selection) queues its task in the same Lua
call: the flow store pushes a message prepared here and publishes its task-sent event, or does
neither. So no claimed flow is ever left without its task, and the shim saves `apply_async`'s two
trips to Redis and most of its CPU. The message is Celery's protocol-2 message (`create_task_message`,
what `apply_async` builds) in kombu's Redis envelope, what `apply_async` would LPUSH but for its ids;
tests/pipeline/test_queueing.py sends one each way and compares them.

Building messages by hand relies on Celery's and kombu's internals, so it is done only where it can
work and was tested: the broker is the flows' Redis (a Lua script reaches one Redis) and the installed
Celery and kombu are the tested ones (worker/queueing/versions.py). Otherwise the task is sent with
`apply_async` after the transition. The sweeper's rare requeues always use `apply_async`.

With traces on (worker.observing.tracing), a message carries a `traceparent` header, the one Celery's
instrumentation reads, so the task's span joins its flow's trace: the current span's context (the
callback's or selection's request, or the flow's own that a requeueing thread joined: `tracing.joined`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, fields
from typing import Any

from celery import Celery
from celery.events import Event
from celery.utils.time import utcoffset
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as kombu_json

from worker.flows.flow import FlowState, is_flow_id
from worker.observing import tracing
from worker.queueing.names import COMPLETE_TASK, DELETE_CONNECTION_TASK, DELIVER_TASK, VERIFY_TASK
from worker.queueing.versions import LibraryVersions


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """A Celery task message that a flow transition pushes onto the broker list itself (see `Enqueuer`)."""

    queue: str  # the broker list (LPUSH)
    message: str
    event_channel: str  # "" when task-sent events are off
    event: str
    task_id: str


EVENT_EXCHANGE = "celeryev"  # celery.events.event.EVENT_EXCHANGE_NAME; a fanout exchange on Redis

log = logging.getLogger(__name__)


def task_for(state: FlowState) -> str:
    """The task that works on a flow in this state."""
    return COMPLETE_TASK if state is FlowState.COMPLETING else VERIFY_TASK


class Enqueuer:
    """Queues the task that works on a flow: with the flow's transition when it can, after it otherwise.

    A caller asks for the `prepared` message, hands it to the store's transition, then calls
    `after_transition`, which sends the task only when the transition moved the flow without pushing
    a message itself.
    `versions` are the installed ones unless given; outside the tested range the Enqueuer logs one
    warning as it is built (at start-up) and never prepares a message.
    """

    def __init__(self, app: Celery, redis_url: str, *, versions: LibraryVersions | None = None) -> None:
        self.app = app
        versions = versions or LibraryVersions.installed()
        tested = versions.tested_or_warn(log, "tasks are queued with apply_async after each transition")
        # a Lua script reaches one Redis only: with the broker elsewhere no transition can push the task
        self.prepares = tested and app.conf.broker_write_url == redis_url  # where tasks are sent
        self._messages = TaskMessages(app)

    @property
    def prepares_without_redis(self) -> bool:
        """Whether `prepared` builds its message without a word with Redis: always, but for the first
        message of a process that sends task-sent events, which reads the events' channel off the broker
        once (and waits for Redis to answer, however long that takes)."""
        return not self.prepares or self._messages.knows_its_channels()

    def prepared(self, flow_id: str, state: FlowState) -> QueuedTask | None:
        """The message of the task for a flow in this state, for the flow's transition to push; None
        when the transition cannot push it (then `after_transition` sends it)."""
        if not self.prepares:
            return None
        return self._messages.prepare(task_for(state), flow_id)

    def after_transition(
        self, done: bool, flow_id: str, state: FlowState, prepared: QueuedTask | None
    ) -> None:
        """Sends the task when the transition moved the flow (`done`) without pushing `prepared` itself."""
        if done and prepared is None:
            self.enqueue(flow_id, state)

    def enqueue(self, flow_id: str, state: FlowState) -> None:
        """Sends the task for a flow in this state with `apply_async`, apart from any transition."""
        self.app.tasks[task_for(state)].apply_async(args=[flow_id])

    def enqueue_delivery(self, delivery_id: str) -> None:
        """Sends a webhook delivery's task (to the deliveries queue: the configuration routes it)."""
        self.app.send_task(DELIVER_TASK, args=[delivery_id])

    def enqueue_connection_deletion(self, tenant: str, connection_id: str) -> None:
        """Sends the task that deletes a connection at Oktopost (worker.connections.deletion)."""
        self.app.send_task(DELETE_CONNECTION_TASK, args=[tenant, connection_id])


class TaskMessages:
    """Builds the messages `apply_async` would send for one of our tasks, without sending them.

    Celery builds a task's message in about 100 µs (its headers, body and task-sent event, each
    serialized): a callback's path. What differs from one flow's message to the next is only a few
    values (the ids, the flow, the sender's thread, clock and moment), so each task's message is built
    by Celery once per process, with markers for those values, and cut into a template (`_Template`)
    that a flow's values fill in a few µs. A template is used only once it has filled in a message
    exactly as Celery builds it for the same values; a flow id of another shape, a traceparent header
    or a serializer other than JSON are built by Celery each time."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._fanout_prefix: str | None = None
        self._templates: dict[tuple[str, int], _Template | None] = {}  # by task and process (a fork's pid)

    def prepare(self, task_name: str, flow_id: str) -> QueuedTask:
        parent = tracing.current_traceparent()
        values = _Values.new(self.app, flow_id)
        if not parent and is_flow_id(flow_id):
            template = self._template(task_name, values.pid)
            if template is not None:
                return template.filled(values)
        return self.built(task_name, values, parent)

    def _template(self, task_name: str, pid: int) -> _Template | None:
        key = (task_name, pid)  # the sender's name in a message holds its pid
        if key not in self._templates:
            self._templates[key] = _Template.of(self, task_name)
        return self._templates[key]

    def built(self, task_name: str, values: _Values, parent: str | None = None) -> QueuedTask:
        """The message and task-sent event as Celery builds them, for these values."""
        app, conf = self.app, self.app.conf
        queue = conf.task_default_queue
        registered = app.tasks.get(task_name)  # as Task.apply_async does: the task's own option
        ignore_result = registered.ignore_result if registered is not None else None
        created = app.amqp.create_task_message(
            values.task_id,
            task_name,
            [values.flow_id],
            {},
            reply_to=values.reply_to,
            create_sent_event=conf.task_send_sent_event,
            root_id=values.task_id,
            ignore_result=ignore_result,
        )
        headers, properties, body, sent_event = created
        if parent:
            headers[tracing.TRACEPARENT] = parent
        message = _envelope(
            body,
            conf.task_serializer,
            headers,
            {**properties, "delivery_mode": 2},  # task_default_delivery_mode "persistent"
            exchange="",
            routing_key=queue,
            delivery_tag=values.message_tag,
        )
        event_channel = event = ""
        if sent_event is not None:
            hostname = headers["origin"]
            fields = {**sent_event, "queue": queue, "exchange": "", "routing_key": queue}
            body_of_event = Event(
                "task-sent",
                __now__=lambda: values.timestamp,
                hostname=hostname,
                utcoffset=values.utcoffset,
                pid=values.pid,
                clock=values.clock,
                **fields,
            )
            event = _envelope(
                body_of_event,
                "json",
                {"hostname": hostname},
                {"delivery_mode": 1},  # the event exchange's: transient
                exchange=EVENT_EXCHANGE,
                routing_key="task.sent",
                delivery_tag=values.event_tag,
            )
            event_channel = f"{self._prefix()}{EVENT_EXCHANGE}/task.sent"
        return QueuedTask(queue, message, event_channel, event, values.task_id)

    def knows_its_channels(self) -> bool:
        """Whether `prepare` can build a message without asking the broker (see `_prefix`)."""
        return self._fanout_prefix is not None or not self.app.conf.task_send_sent_event

    def _prefix(self) -> str:
        """kombu's prefix of fanout channels ("/{db}."), read off a broker channel once."""
        if self._fanout_prefix is None:
            with self._lock:
                if self._fanout_prefix is None:
                    with self.app.producer_or_acquire() as producer:
                        self._fanout_prefix = str(producer.channel.keyprefix_fanout)
        return self._fanout_prefix


def _envelope(
    body: Any,
    serializer: str,
    headers: dict[str, Any],
    properties: dict[str, Any],
    *,
    exchange: str,
    routing_key: str,
    delivery_tag: str,
) -> str:
    """kombu's message, as Producer.publish and the virtual channel's basic_publish shape it."""
    content_type, content_encoding, data = serialize(body, serializer=serializer)
    payload = data.encode(content_encoding) if isinstance(data, str) else data
    return str(
        kombu_json(
            {
                "body": base64.b64encode(payload).decode("ascii"),
                "content-encoding": content_encoding,
                "content-type": content_type,
                "headers": headers,
                "properties": {
                    **properties,
                    "delivery_info": {"exchange": exchange, "routing_key": routing_key},
                    "priority": 0,
                    "body_encoding": "base64",
                    "delivery_tag": delivery_tag,
                },
            }
        )
    )


@dataclass(frozen=True, slots=True)
class _Values:
    """What differs between two messages of a task: the flow, the ids, the sending thread's reply-to
    (Celery's per-thread oid), and the task-sent event's clock, moment and process."""

    flow_id: str
    task_id: str
    reply_to: str
    message_tag: str
    event_tag: str
    clock: int
    timestamp: float
    utcoffset: float
    pid: int

    @classmethod
    def new(cls, app: Celery, flow_id: str) -> _Values:
        clock = app.clock.forward() if app.conf.task_send_sent_event else 0
        return cls(
            flow_id,
            str(uuid.uuid4()),
            str(app.thread_oid),
            str(uuid.uuid4()),
            str(uuid.uuid4()),
            clock,
            time.time(),
            utcoffset(),
            os.getpid(),
        )

    @classmethod
    def marked(cls) -> _Values:
        """Markers standing for each value, in the JSON Celery builds (a number's marker is quoted)."""
        return cls(*(f"{_MARK}{name}{_MARK}" for name in _VALUE_NAMES))  # type: ignore[arg-type]


_MARK = "@okc-template@"
_VALUE_NAMES = tuple(value.name for value in fields(_Values))
_NUMBERS = frozenset({"clock", "timestamp", "utcoffset", "pid"})


@dataclass(frozen=True, slots=True)
class _Template:
    """A task's message and task-sent event, as format strings over `_Values`' names (and `body`)."""

    message: str
    body: str  # the message's body before base64, as the serializer wrote it
    event: str
    event_body: str
    queue: str
    event_channel: str

    @classmethod
    def of(cls, messages: TaskMessages, task_name: str) -> _Template | None:
        """The task's template, when its messages are JSON and the template fills in what Celery builds."""
        if messages.app.conf.task_serializer != "json":
            return None
        built = messages.built(task_name, _Values.marked())
        template = cls(
            *_cut(built.message),
            *_cut(built.event) if built.event else ("", ""),
            built.queue,
            built.event_channel,
        )
        sample = _Values.new(messages.app, "0123456789abcdef" * 2)
        if template.filled(sample) != messages.built(task_name, sample):
            log.warning("%s: its messages are built by Celery each time (the template differs)", task_name)
            return None
        return template

    def filled(self, values: _Values) -> QueuedTask:
        slots = {name: getattr(values, name) for name in _VALUE_NAMES}
        body = _base64(self.body.format(**slots))
        message = self.message.format(body=body, **slots)
        event = ""
        if self.event:
            event = self.event.format(body=_base64(self.event_body.format(**slots)), **slots)
        return QueuedTask(self.queue, message, self.event_channel, event, values.task_id)


def _cut(envelope: str) -> tuple[str, str]:
    """An envelope built with `_Values.marked()` as a format string whose body is `{body}`, and its
    body (decoded from base64) as a format string over the values."""
    decoded = json.loads(envelope)
    body = base64.b64decode(decoded["body"]).decode()
    decoded["body"] = f"{_MARK}body{_MARK}"
    return _format_string(str(kombu_json(decoded))), _format_string(body)


def _format_string(text: str) -> str:
    text = text.replace("{", "{{").replace("}", "}}")
    for name in (*_VALUE_NAMES, "body"):
        marker = f"{_MARK}{name}{_MARK}"
        if name in _NUMBERS:
            text = text.replace(f'"{marker}"', f"{{{name}!r}}")
        text = text.replace(marker, f"{{{name}}}")
    return text


def _base64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")
