"""The worker's `stats` (`celery inspect stats`, Flower's worker page and /api/workers) without secrets.

Celery drops the broker connection's own password from its stats, but shows the transport options as
they are, and with REDIS_SENTINELS those hold the sentinels' password (`sentinel_kwargs`, see
celeryconfig.py). The command is Celery's, answered from a copy with every value under a key that names
a password masked, as Celery's `conf` report masks it.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import inspect_command

MASK = "********"


def masked(value: Any) -> Any:
    """A copy of `value` (dicts, lists, tuples inside it copied too) whose values under a key naming a
    password are MASK."""
    if isinstance(value, dict):
        return {
            key: MASK if isinstance(key, str) and "password" in key.lower() else masked(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [masked(item) for item in value]
    return value


@inspect_command()  # registered under Celery's own name: it answers `stats` in this worker
def stats(state: Any, **_: Any) -> Any:
    """Request worker statistics/information."""
    return masked(state.consumer.controller.stats())
