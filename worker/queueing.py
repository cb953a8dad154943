"""Celery task messages built ahead of time, so that the flow step which makes work also queues it.

A callback used to be a Lua step (the claim) followed by `apply_async`: two more trips to Redis (the
LPUSH, then the task-sent event's PUBLISH), about 0.75 ms of CPU inside Celery and kombu, and a moment
in which a claimed flow had no task (a shim dying there left the flow to the lease sweeper). Now the
step's own Lua script pushes the task and publishes its task-sent event, or does neither: the message is
Celery's protocol-2 message (`create_task_message`, what `apply_async` builds) in kombu's Redis envelope,
what `apply_async` would LPUSH but for its ids. tests/pipeline/test_queueing.py sends one each way and
compares them, so a Celery or kombu release that changes either fails there, not in production.

Only what the shim does per request is built here; the sweeper's rare requeues keep `apply_async`.
"""

from __future__ import annotations

import base64
import os
import threading
import uuid
from typing import Any

from celery import Celery
from celery.events import Event
from celery.utils.time import utcoffset
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as kombu_json

from worker.flow import FlowState
from worker.store import QueuedTask

VERIFY_TASK = "oktopost.verify"
COMPLETE_TASK = "oktopost.complete"
EVENT_EXCHANGE = "celeryev"  # celery.events.event.EVENT_EXCHANGE_NAME; a fanout exchange on Redis


def task_for(state: FlowState) -> str:
    """The task that works on a flow in this state."""
    return COMPLETE_TASK if state is FlowState.COMPLETING else VERIFY_TASK


class TaskMessages:
    """Builds the messages `apply_async` would send for one of our tasks, without sending them."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._fanout_prefix: str | None = None

    def prepare(self, task_name: str, flow_id: str) -> QueuedTask:
        app, conf = self.app, self.app.conf
        task_id = str(uuid.uuid4())
        queue = conf.task_default_queue
        registered = app.tasks.get(task_name)  # as Task.apply_async does: the task's own option
        ignore_result = registered.ignore_result if registered is not None else None
        created = app.amqp.create_task_message(
            task_id,
            task_name,
            [flow_id],
            {},
            reply_to=app.thread_oid,
            create_sent_event=conf.task_send_sent_event,
            root_id=task_id,
            ignore_result=ignore_result,
        )
        headers, properties, body, sent_event = created
        message = _envelope(
            body,
            conf.task_serializer,
            headers,
            {**properties, "delivery_mode": 2},  # task_default_delivery_mode "persistent"
            exchange="",
            routing_key=queue,
        )
        event_channel = event = ""
        if sent_event is not None:
            hostname = headers["origin"]
            fields = {**sent_event, "queue": queue, "exchange": "", "routing_key": queue}
            body_of_event = Event(
                "task-sent",
                hostname=hostname,
                utcoffset=utcoffset(),
                pid=os.getpid(),
                clock=app.clock.forward(),
                **fields,
            )
            event = _envelope(
                body_of_event,
                "json",
                {"hostname": hostname},
                {"delivery_mode": 1},  # the event exchange's: transient
                exchange=EVENT_EXCHANGE,
                routing_key="task.sent",
            )
            event_channel = f"{self._prefix()}{EVENT_EXCHANGE}/task.sent"
        return QueuedTask(queue, message, event_channel, event, task_id)

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
                    "delivery_tag": str(uuid.uuid4()),
                },
            }
        )
    )
