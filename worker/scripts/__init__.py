"""Every Lua script of the pipeline: one `.lua` file each, beside this loader, and loaded only here.

Each file's header documents its KEYS, ARGV and return values. A state change that must be atomic (a
flow's transition with its event, a lease, a budget slot) is one script, never a read-modify-write in
Python. Functions that several steps share live in a file of their own, pulled in by a line
`--! include NAME` (replaced by `NAME.lua`'s text), so each step is still sent as one script.

A script is sent by EVALSHA (and loaded again when Redis answers NOSCRIPT, after a restart). On a
redis-py client of a real server, the call takes a short path (`Step`): EVALSHA on a connection of a
small set the client's scripts share, made with the client's own settings (timeouts, retries, health
checks, the primary its sentinels name), instead of redis-py's general command path, which costs a
script call about as much CPU again as the call itself (its connection pool's checks and its
per-command bookkeeping). Inside a pipeline, and on any other client, a script is redis-py's `Script`.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from importlib.resources import files
from typing import Any

from redis import Redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError, ResponseError

_INCLUDE = re.compile(r"^--! include ([a-z_]+)$", re.MULTILINE)
_ATTRIBUTE = "_oktopost_scripts"  # a pool's set of script connections, shared by its clients' scripts


@cache
def source(name: str) -> str:
    """The text of `{name}.lua`, with the files it includes in place of their `--! include` lines."""
    text = files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda line: source(line.group(1)), text)


def register(client: Any, name: str) -> Step:
    """`{name}.lua` registered on a Redis client (sent by EVALSHA, loaded again after a Redis restart)."""
    return Step(client.register_script(source(name)), _Connections.of(client))


class Step:
    """One script on one client, called as redis-py's `Script` is: `step(keys=..., args=...)`, or with
    `client=` a pipeline (or another client) to send it there."""

    def __init__(self, script: Script, connections: _Connections | None) -> None:
        self.script = script
        self._connections = connections

    def __call__(self, keys: Sequence[Any] = (), args: Iterable[Any] = (), client: Any = None) -> Any:
        if client is None and self._connections is not None:
            return self._connections.evalsha(self.script, keys, tuple(args))
        return self.script(keys=keys, args=args, client=client)

    def send(self, keys: Sequence[Any] = (), args: Iterable[Any] = ()) -> Sent:
        """The call sent now, its answer read later (`Sent.answer`), by this thread or another: the work
        between the two overlaps the script's round trip. Off the short path, the call is made at once."""
        if self._connections is None:
            answered = self(keys=keys, args=args)
            return Sent(lambda: answered)
        return self._connections.send(self.script, keys, tuple(args))


class Sent:
    """A script call whose answer is not read yet. `answer()` reads it, once: it gives the connection back
    (or closes it when the call failed, and makes the call again)."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self._read: Callable[[], Any] | None = read

    def answer(self) -> Any:
        read, self._read = self._read, None
        return read() if read is not None else None


class _Connections:
    """Connections of one client's scripts: made with the client pool's settings as needed, kept for the
    next call (at most as many as scripts ever ran at once in the process), each used by one call at a
    time. A call that fails other than by the script's own error leaves its connection closed: the next
    call opens it again, so no late answer is ever read as another call's."""

    _all: weakref.WeakSet[_Connections] = weakref.WeakSet()

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._free: list[Any] = []
        _Connections._all.add(self)
        disconnect = pool.disconnect

        def disconnect_with_scripts(*args: Any, **kwargs: Any) -> Any:
            """The pool's disconnect (a client's `close()`, say) closes the scripts' connections too."""
            self.close()
            return disconnect(*args, **kwargs)

        pool.disconnect = disconnect_with_scripts

    def close(self) -> None:
        """Closes the free connections (one in use is closed by its call, or opened again by the next)."""
        while True:
            try:
                connection = self._free.pop()
            except IndexError:
                return
            connection.disconnect()

    @classmethod
    def of(cls, client: Any) -> _Connections | None:
        """The client's set; None for a client the short path does not serve (asyncio, a pipeline, one
        pinned to a single connection, or a stand-in such as fakeredis)."""
        if type(client) is not Redis or getattr(client, "connection", None) is not None:
            return None
        pool = client.connection_pool
        if not pool.connection_class.__module__.startswith("redis."):
            return None
        found: _Connections | None = getattr(pool, _ATTRIBUTE, None)
        if found is None:
            found = cls(pool)
            setattr(pool, _ATTRIBUTE, found)
        return found

    def _connection(self) -> Any:
        """A free connection of the set, or a new one made with the client pool's settings."""
        try:
            return self._free.pop()
        except IndexError:
            return self._pool.connection_class(**self._pool.connection_kwargs)

    def evalsha(self, script: Script, keys: Sequence[Any], args: tuple[Any, ...]) -> Any:
        connection = self._connection()
        try:
            return connection.retry.call_with_retry(
                lambda: _evalsha(connection, script, keys, args), lambda _error: connection.disconnect()
            )
        except ResponseError:
            raise  # the script's own error: its answer was read whole, the connection is clean
        except BaseException:
            connection.disconnect()
            raise
        finally:
            self._free.append(connection)

    def send(self, script: Script, keys: Sequence[Any], args: tuple[Any, ...]) -> Sent:
        """EVALSHA sent on a connection of the set, which stays out of it until the answer is read."""
        connection = self._connection()
        try:
            connection.connect()
            connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except BaseException:  # not sent: the call is made when its answer is asked for
            connection.disconnect()
            self._free.append(connection)
            return Sent(lambda: self.evalsha(script, keys, args))
        return Sent(lambda: self.finish(connection, script, keys, args))

    def finish(self, connection: Any, script: Script, keys: Sequence[Any], args: tuple[Any, ...]) -> Any:
        """The answer of a call sent on `connection`. A failure other than the script's own error closes
        the connection and makes the call again, as `evalsha` retries one."""
        try:
            answer = connection.read_response()
        except NoScriptError:  # Redis restarted, or its scripts were flushed: `evalsha` loads it
            self._free.append(connection)
            return self.evalsha(script, keys, args)
        except ResponseError:
            self._free.append(connection)  # the script's own error: its answer was read whole
            raise
        except BaseException:
            connection.disconnect()
            self._free.append(connection)
            return self.evalsha(script, keys, args)
        self._free.append(connection)
        return answer

    def _forget(self) -> None:
        self._free = []  # a forked child: these are the parent's sockets


def _evalsha(connection: Any, script: Script, keys: Sequence[Any], args: tuple[Any, ...]) -> Any:
    connection.connect()  # the connection's own way (with REDIS_SENTINELS, to the primary named now)
    connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
    try:
        return connection.read_response()
    except NoScriptError:  # Redis restarted, or its scripts were flushed
        connection.send_command("SCRIPT", "LOAD", script.script)
        connection.read_response()
        connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return connection.read_response()


def _forget_all_after_fork() -> None:
    for connections in list(_Connections._all):
        connections._forget()


os.register_at_fork(after_in_child=_forget_all_after_fork)
