"""Two changes to kombu's Redis transport: a worker survives losing Redis while tasks are running, and a
publish reuses its channel's Redis client instead of building one.

1. Surviving a lost Redis.

On a lost broker connection Celery 5.7 tears the connection down (`collect()`, which drops the transport's
link to its settings) and then closes it again; that second close makes the channel give its running
tasks' messages back, which needs a Redis client built from the settings just dropped: kombu raises
AttributeError ('NoneType' object has no attribute 'hostname'), which is not a connection error, so the
worker logs "Unrecoverable error" and exits (with status 0) instead of reconnecting. Repaired, that case
is a connection error, which Celery's close ignores: the worker reconnects, the messages stay in Redis's
unacked set until the visibility timeout restores them, and the lease sweeper takes up their flows long
before that (worker/tasks/sweeper.py).

The method is wrapped in place rather than through a transport of our own (`broker_transport`), which
would name that class in the broker URL that Celery and Flower print and parse (Flower's /broker breaks).

2. One client per channel. kombu's `conn_or_acquire()` builds a new `redis.Redis` around the channel's
connection pool for every LPUSH, event PUBLISH and ack; with redis-py 8 building one costs about 0.2 ms
of CPU (its table of response callbacks), about 40 % of what `apply_async` costs the shim and as much
again per task in the worker, which publishes three task events and an ack. The client holds no
connection of its own (each command borrows one from the pool) and is safe to share between threads,
so each channel keeps the one it built for as long as its pool lives; a pool that kombu drops after a
lost connection gets a new client with the new pool.

Both reach into kombu's internals, so they are made only on the tested Celery and kombu releases
(worker/queueing/versions.py); on others kombu's transport is left as it ships, with one warning.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from worker.queueing.versions import LibraryVersions

log = logging.getLogger(__name__)

_REPAIRED = "_oktopost_connect_repaired"
_CLIENT = "_oktopost_connect_client"


def repair_redis_transport(versions: LibraryVersions | None = None) -> bool:
    """Idempotent; called where Celery is configured (celeryconfig.py). False when the installed (or
    given) versions are not the tested ones: then nothing is changed and one warning says so."""
    versions = versions or LibraryVersions.installed()
    if not versions.tested_or_warn(log, "kombu's Redis transport is left as it ships"):
        return False
    _fail_closed_connection_as_connection_error()
    _reuse_one_client_per_channel()
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
