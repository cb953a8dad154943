"""The Celery queues and task names, without Celery: the configuration, the command line and the shim
name them alike.

Flows' tasks (verify, complete) go to `oktopost-connect`, webhook deliveries to
`oktopost-connect.webhooks`; with a CHANNEL_PREFIX other than `oktopost` both start with `{prefix}.`,
so that two deployments sharing one Redis never take each other's tasks.
"""

from __future__ import annotations

VERIFY_TASK = "oktopost.verify"
COMPLETE_TASK = "oktopost.complete"
DELIVER_TASK = "oktopost.deliver"
DELETE_CONNECTION_TASK = "oktopost.delete_connection"
# the tasks that work on a flow, its id their one argument: its lease, not the broker, brings them back
# when a worker dies (worker.tasks.celery_tasks defines them, by the state of the flow each works on)
FLOW_TASKS = frozenset({VERIFY_TASK, COMPLETE_TASK})


# The kinds of task a worker may serve (`oktopost-connect worker --serve`), each with a queue of its own.
FLOWS, DELIVERIES = "flows", "deliveries"
QUEUE_KINDS = (FLOWS, DELIVERIES)


def flows_queue(prefix: str) -> str:
    return "oktopost-connect" if prefix == "oktopost" else f"{prefix}.oktopost-connect"


def deliveries_queue(prefix: str) -> str:
    return f"{flows_queue(prefix)}.webhooks"


def kind_queues(prefix: str) -> dict[str, str]:
    """Each kind of task (QUEUE_KINDS) and its queue."""
    return {FLOWS: flows_queue(prefix), DELIVERIES: deliveries_queue(prefix)}
