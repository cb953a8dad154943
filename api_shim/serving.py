"""How the shim is served: uvicorn with h11, bounded so that slow or idle clients cannot exhaust it,
and stopped gracefully.

uvicorn waits for a request head for ever once its first byte came (and for the first byte of a new
connection too), and the shim is published directly. The protocol here closes a connection that has
not sent a complete request head within `head_timeout` seconds of being opened or of its last answer;
uvicorn's `limit_concurrency` bounds how many connections and requests are served at once; a request
past it is answered, without reaching the app, by `overloaded`: 503 with the shim's JSON error body,
`Retry-After: 1` and the browser routes' headers, where uvicorn's own answer is a bare `text/plain` 503.

On SIGTERM (or SIGINT) `DrainingServer` stops accepting connections, answers the requests under way
(event streams end with a `retry:` hint, api_shim/streams.py) and returns, so the process exits 0;
uvicorn's own server raises the signal again once drained, and the process dies of it.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import h11
import uvicorn
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http import h11_impl
from uvicorn.protocols.http.h11_impl import H11Protocol

from api_shim.browser import BrowserHeaders
from api_shim.errors import error_response

MAX_HEAD_BYTES = 16 * 1024  # h11's bound on a request line and headers: the first of the size limits


class HeadTimeoutProtocol(H11Protocol):
    head_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is in: the request is the app's now
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_head()  # the next request on this connection gets the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_waiting()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _stop_waiting(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


async def overloaded(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer to a request past `--limit-concurrency`, as every other refusal of the shim reads; but
    the liveness probe's is its usual 200: a busy shim is alive, and an orchestrator that restarted it
    for being busy would only make it busier (`/readyz` is refused, taking it out of rotation meanwhile)."""
    if scope.get("path") == "/healthz" and scope.get("method") in ("GET", "HEAD"):
        await JSONResponse({"status": "ok"})(scope, receive, send)
        return
    message = "the shim is serving as many requests as it may: try again in a moment"
    response = error_response(503, "overloaded", message, headers={"Retry-After": "1"})
    await BrowserHeaders(response)(scope, receive, send)


def protocol(head_timeout: float) -> type[HeadTimeoutProtocol]:
    """The protocol class uvicorn builds per connection, with this head timeout; its requests past the
    concurrency limit are answered by `overloaded` (uvicorn's h11 protocol looks its answer up by name)."""
    h11_impl.service_unavailable = overloaded  # type: ignore[assignment]
    return type("ShimProtocol", (HeadTimeoutProtocol,), {"head_timeout": head_timeout})


class DrainingServer(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """SIGTERM and SIGINT start the graceful shutdown; once it is done, the process simply returns."""
        if threading.current_thread() is not threading.main_thread():  # signals reach the main one only
            yield
            return
        stops = (signal.SIGINT, signal.SIGTERM)
        before = {signum: signal.signal(signum, self.handle_exit) for signum in stops}
        try:
            yield
        finally:
            for signum, handler in before.items():
                signal.signal(signum, handler)
