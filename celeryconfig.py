"""Celery configuration of oktopost-connect, read from the environment through worker.config.settings.

Why each choice (docs/design.md, "Guarantees", says what they promise):
- acks late + reject on worker lost: a task whose worker dies is delivered again, never dropped.
- prefetch 1: a worker holds no more flows than it is working on, so others can take them.
- visibility timeout longer than the longest task (a task never outlives its flow's token), so Redis
  does not hand a task still running to a second worker (celery #2599). A dead worker's flow is taken
  up much sooner by the lease sweeper (worker/tasks/sweeper.py), within a quarter of TOKEN_TTL_SECONDS.
- task and sent events on, so Flower shows every task; results are not stored (events carry outcomes).
- two queues: flows (verify, complete) and webhook deliveries; a worker serves either or both.
- with REDIS_SENTINELS, the broker is the store's primary found through the same sentinels (a flow's
  transition queues its task on the broker's Redis in the same atomic step: they must be one server).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from kombu import Exchange, Queue

from worker.config.envfile import from_env_file
from worker.config.flower import flower_refusal
from worker.config.settings import ConfigError, get_settings
from worker.queueing.broker import repair_redis_transport
from worker.queueing.names import DELIVER_TASK, deliveries_queue, flows_queue

try:
    _settings = get_settings()
except ConfigError as error:  # `celery -A worker ...` started with a bad setting: one line, exit 2
    print(f"oktopost-connect: {error}", file=sys.stderr)
    raise SystemExit(2) from None
if (_refusal := flower_refusal(sys.argv, os.environ, from_env_file())) is not None:  # worker/config/flower.py
    print(f"oktopost-connect: {_refusal}", file=sys.stderr)
    raise SystemExit(2)

repair_redis_transport()  # a worker survives a Redis restart while tasks run (worker/queueing/broker.py)
broker_url = _settings.broker_url
broker_connection_retry_on_startup = True
broker_transport_options: dict[str, Any] = {
    "visibility_timeout": _settings.token_ttl_seconds + 120,
    "socket_timeout": 5,
    "socket_connect_timeout": 5,
    "health_check_interval": 10,
    "retry_on_timeout": True,
}
if broker_url.startswith("sentinel://"):  # REDIS_SENTINELS: kombu finds the primary, and follows it
    # Celery prefers a CELERY_BROKER_URL in the environment to broker_url; these two it does not
    broker_read_url = broker_write_url = broker_url
    broker_transport_options["master_name"] = _settings.redis_sentinel_master
    if _settings.redis_sentinel_password is not None:
        broker_transport_options["sentinel_kwargs"] = {
            "password": _settings.redis_sentinel_password.get_secret_value()
        }
broker_pool_limit = 20

# Named after the project, not Celery's generic "celery", which another app on the same Redis would
# consume. Flows live under CHANNEL_PREFIX and so do their tasks: two deployments (or a demo beside
# production) sharing one Redis must not take each other's tasks.
task_default_queue = flows_queue(_settings.channel_prefix)
# Webhook deliveries have a queue of their own (docs/webhooks.md): a slow or dead endpoint never holds a
# flow's task up in the broker, and `-Q` (or `oktopost-connect worker --serve`) picks what a worker serves.
# A worker started without -Q serves both.
task_queues = (
    Queue(task_default_queue, Exchange(task_default_queue), routing_key=task_default_queue),
    Queue(
        deliveries_queue(_settings.channel_prefix),
        Exchange(deliveries_queue(_settings.channel_prefix)),
        routing_key=deliveries_queue(_settings.channel_prefix),
    ),
)
task_routes = {DELIVER_TASK: {"queue": deliveries_queue(_settings.channel_prefix)}}

task_serializer = "json"
accept_content = ["json"]
task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure = True
task_acks_on_timeout = True
task_ignore_result = True
task_track_started = True
worker_prefetch_multiplier = 1
# Threads: a task spends its time waiting on Oktopost and Redis, and threads share one Oktopost client
# and one Redis pool per process. `celery -A worker worker` gets them too, not only our command.
worker_pool = "threads"
worker_concurrency = 8
worker_hijack_root_logger = False
worker_redirect_stdouts = False

worker_send_task_events = True
task_send_sent_event = True
enable_utc = True
