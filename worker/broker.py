"""One repair to kombu's Redis transport, so that a worker survives losing Redis while tasks are running.

On a lost broker connection Celery 5.7 tears the connection down (`collect()`, which drops the transport's
link to its settings) and then closes it again; that second close makes the channel give its running
tasks' messages back, which needs a Redis client built from the settings just dropped: kombu raises
AttributeError ('NoneType' object has no attribute 'hostname'), which is not a connection error, so the
worker logs "Unrecoverable error" and exits (with status 0) instead of reconnecting. Repaired, that case
is a connection error, which Celery's close ignores: the worker reconnects, the messages stay in Redis's
unacked set until the visibility timeout restores them, and the lease sweeper takes up their flows long
before that (worker/sweeper.py).

The method is wrapped in place rather than through a transport of our own (`broker_transport`), which
would name that class in the broker URL that Celery and Flower print and parse (Flower's /broker breaks).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_REPAIRED = "_oktopost_connect_repaired"


def repair_redis_transport() -> None:
    """Idempotent; called where Celery is configured (celeryconfig.py)."""
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
