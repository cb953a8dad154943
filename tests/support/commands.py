"""The Redis commands a client sends while a block runs, whichever path they take: redis-py's command
path, or a script's short path (worker.scripts.Step)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest.mock import patch

from worker.scripts import _Connections


@contextmanager
def commands_sent(client: Any) -> Iterator[list[str]]:
    """Each command's name, in the order sent (a pipeline counts as its commands)."""
    sent: list[str] = []
    execute, evalsha, connections = client.execute_command, _Connections.evalsha, _Connections.of(client)

    def through_redis_py(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return execute(*args, **options)

    def short_path(self: _Connections, *args: Any) -> Any:
        if self is connections:
            sent.append("EVALSHA")
        return evalsha(self, *args)

    with (
        patch.object(client, "execute_command", through_redis_py),
        patch.object(_Connections, "evalsha", short_path),
    ):
        yield sent
