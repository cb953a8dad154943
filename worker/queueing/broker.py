"""Four changes to kombu's Redis transport: a worker survives losing Redis while tasks are running, and a
Redis that turns into a replica under its wait for tasks; a publish reuses its channel's Redis client
instead of building one; and a flow task's message is not copied into kombu's unacked hash.

1. Surviving a lost Redis.

On a lost broker connection Celery 5.7 tears the connection down (`collect()`, which drops the transport's
link to its settings) and then closes it again; that second close makes the channel give its running
tasks' messages back, which needs a Redis client built from the settings just dropped: kombu raises
AttributeError ('NoneType' object has no attribute 'hostname'), which is not a connection error, so the
worker logs "Unrecoverable error" and exits (with status 0) instead of reconnecting. Repaired, that case
is a connection error, which Celery's close ignores: the worker reconnects, the messages stay in Redis's
unacked set until the visibility timeout restores them, and the lease sweeper takes up their flows long
before that (worker/tasks/sweeper.py).

A Redis demoted under the consumer's BRPOP (REPLICAOF: a managed Redis's failover, an operator's
mistake) answers it `UNBLOCKED ... (master -> replica?)`, a ResponseError that kombu passes up as it is:
Celery took it for an unrecoverable error and the worker exited (with status 0, so a supervisor that
restarts only on failure left it down). That answer, and a read-only or master-down refusal, now drop
the connection and count as a connection error: the worker reconnects, and waits on whichever Redis it
reaches, as after a restart (its first look for expired unacknowledged messages, a write, waits for the
next while Redis is read-only).

The methods are wrapped in place rather than through a transport of our own (`broker_transport`), which
would name that class in the broker URL that Celery and Flower print and parse (Flower's /broker breaks).

2. One client per channel. kombu's `conn_or_acquire()` builds a new `redis.Redis` around the channel's
connection pool for every LPUSH, event PUBLISH and ack; with redis-py 8 building one costs about 0.2 ms
of CPU (its table of response callbacks), about 40 % of what `apply_async` costs the shim and as much
again per task in the worker, which publishes three task events and an ack. The client holds no
connection of its own (each command borrows one from the pool) and is safe to share between threads,
so each channel keeps the one it built for as long as its pool lives; a pool that kombu drops after a
lost connection gets a new client with the new pool.

3. Flow tasks tracked in memory. kombu emulates acknowledgements on Redis: before Celery sees a message,
its consumer copies it into the `unacked` hash (and its time into `unacked_index`), one round trip, and
the ack removes it, another; a copy left there past the visibility timeout (TOKEN_TTL_SECONDS + 120 s) is
pushed again. A flow task (verify, complete) needs none of it: its flow is under a lease from the claim
that queued it, renewed while a worker holds it, and a worker that dies stops renewing it, so the lease
sweeper queues the flow's task again within half of TOKEN_TTL_SECONDS (worker/tasks/sweeper.py), long
before kombu's copy would come back (and be fenced out by the take). So a flow task's message is
tracked in memory only, as kombu's in-memory transports do: the prefetch count still counts it, and
what gives messages back (a reject with requeue, the channel's close) pushes it again from memory. The
round trip between the message's arrival and the task's start, and the ack's, are gone. Webhook
deliveries and connection deletions keep kombu's copy: Celery delivers them again after a crash.

All three reach into kombu's internals, so they are made only on the tested Celery and kombu releases
(worker/queueing/versions.py); on others kombu's transport is left as it ships, with one warning.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from worker.queueing.names import FLOW_TASKS
from worker.queueing.versions import LibraryVersions

log = logging.getLogger(__name__)

_REPAIRED = "_oktopost_connect_repaired"
_CLIENT = "_oktopost_connect_client"
_IN_MEMORY = "_oktopost_connect_in_memory"


def repair_redis_transport(versions: LibraryVersions | None = None) -> bool:
    """Idempotent; called where Celery is configured (celeryconfig.py). False when the installed (or
    given) versions are not the tested ones: then nothing is changed and one warning says so."""
    versions = versions or LibraryVersions.installed()
    if not versions.tested_or_warn(log, "kombu's Redis transport is left as it ships"):
        return False
    _fail_closed_connection_as_connection_error()
    _fail_demoted_redis_as_connection_error()
    _reuse_one_client_per_channel()
    _track_flow_tasks_in_memory()
    return True


def _fail_closed_connection_as_connection_error() -> None:
    original: Callable[..., dict[str, Any]] = kombu_redis.Channel._connparams
    if getattr(original, _REPAIRED, False):
        return

    @functools.wraps(original)
    def connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection was already closed")
        return original(self, asynchronous=asynchronous)

    setattr(connparams, _REPAIRED, True)
    setattr(kombu_redis.Channel, "_connparams", connparams)  # noqa: B010 - mypy refuses assigning a method


# what a Redis that stopped being a writable primary answers a BRPOP waiting on it (or a new command)
_DEMOTED = ("UNBLOCKED", "MASTERDOWN")


def _fail_demoted_redis_as_connection_error() -> None:
    original: Callable[..., Any] = kombu_redis.Channel._brpop_read
    if getattr(original, _REPAIRED, False):
        return
    # a write refused by a replica: the consumer reconnects (and tries again) as for a Redis away
    transport = kombu_redis.Transport
    if redis.ReadOnlyError not in transport.connection_errors:
        transport.connection_errors = (*transport.connection_errors, redis.ReadOnlyError)

    @functools.wraps(original)
    def brpop_read(self: Any, **options: Any) -> Any:
        try:
            return original(self, **options)
        except redis.ResponseError as error:
            if isinstance(error, redis.ReadOnlyError) or not str(error).startswith(_DEMOTED):
                raise
            connection = getattr(self.client, "connection", None)
            if connection is not None:
                connection.disconnect()
            raise redis.ConnectionError(
                f"the broker's Redis is no longer a writable primary: {error}"
            ) from None

    setattr(brpop_read, _REPAIRED, True)
    setattr(kombu_redis.Channel, "_brpop_read", brpop_read)  # noqa: B010

    # the consumer's (re)connection gives back expired unacked messages first, under a lock it SETs: on a
    # replica that waits for the next periodic look instead of failing the connection again and again
    restore_visible: Callable[..., Any] = kombu_redis.QoS.restore_visible

    @functools.wraps(restore_visible)
    def restore_visible_(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return restore_visible(self, *args, **kwargs)
        except redis.ReadOnlyError:
            log.info("unacknowledged messages are given back later: the broker's Redis is read-only")
            return None

    setattr(restore_visible_, _REPAIRED, True)
    setattr(kombu_redis.QoS, "restore_visible", restore_visible_)  # noqa: B010


def _reuse_one_client_per_channel() -> None:
    original: Callable[..., Any] = kombu_redis.Channel._create_client
    if getattr(original, _REPAIRED, False):
        return

    @functools.wraps(original)
    def create_client(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's own BRPOP/pub-sub clients: built once by kombu already
            return original(self, asynchronous=True)
        client = self.__dict__.get(_CLIENT)
        if client is None or client.connection_pool is not self.pool:
            client = original(self)
            self.__dict__[_CLIENT] = client
        return client

    setattr(create_client, _REPAIRED, True)
    setattr(kombu_redis.Channel, "_create_client", create_client)  # noqa: B010


def _track_flow_tasks_in_memory() -> None:
    qos = kombu_redis.QoS
    if getattr(qos.append, _REPAIRED, False):
        return
    append, ack, reject, restore_by_tag = qos.append, qos.ack, qos.reject, qos.restore_by_tag
    in_memory_only = virtual.QoS  # the bookkeeping kombu's Redis QoS adds its copies to

    @functools.wraps(append)
    def append_(self: Any, message: Any, delivery_tag: str) -> None:
        if (message.headers or {}).get("task") not in FLOW_TASKS:
            return append(self, message, delivery_tag)
        _in_memory(self).add(delivery_tag)
        in_memory_only.append(self, message, delivery_tag)
        return None

    @functools.wraps(ack)
    def ack_(self: Any, delivery_tag: str) -> None:
        tags = _in_memory(self)
        if delivery_tag not in tags:
            return ack(self, delivery_tag)
        tags.discard(delivery_tag)
        in_memory_only.ack(self, delivery_tag)
        return None

    @functools.wraps(reject)
    def reject_(self: Any, delivery_tag: str, requeue: bool = False) -> None:
        tags = _in_memory(self)
        if delivery_tag not in tags:
            return reject(self, delivery_tag, requeue=requeue)
        if requeue:
            _push_again(self, delivery_tag, leftmost=True)
        tags.discard(delivery_tag)
        in_memory_only.ack(self, delivery_tag)
        return None

    @functools.wraps(restore_by_tag)
    def restore_by_tag_(self: Any, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        tags = _in_memory(self)
        if tag not in tags:  # kombu's own: a copy in Redis (or a tag of another process's)
            return restore_by_tag(self, tag, client=client, leftmost=leftmost)
        _push_again(self, tag, client, leftmost)
        tags.discard(tag)
        return None

    methods = {"append": append_, "ack": ack_, "reject": reject_, "restore_by_tag": restore_by_tag_}
    for name, method in methods.items():
        setattr(method, _REPAIRED, True)
        setattr(qos, name, method)


def _in_memory(qos: Any) -> set[str]:
    """The delivery tags of the flow tasks' messages a channel's QoS tracks in memory only."""
    tags: set[str] | None = qos.__dict__.get(_IN_MEMORY)
    if tags is None:
        tags = qos.__dict__[_IN_MEMORY] = set()
    return tags


def _push_again(qos: Any, delivery_tag: str, client: Any = None, leftmost: bool = False) -> None:
    """A message tracked in memory goes back to its queue, as kombu gives back one it copied to Redis:
    marked redelivered, at the queue's head when `leftmost` (a reject), else where kombu's restore puts it."""
    message = qos._delivered.get(delivery_tag)
    if message is None:
        return
    exchange, routing_key = message.delivery_info["exchange"], message.delivery_info["routing_key"]
    with qos.channel.conn_or_acquire(client) as connection:
        pipe = connection.pipeline()
        qos.channel._do_restore_message(message._raw, exchange, routing_key, pipe, leftmost)
        pipe.execute()
