"""Each attempt's whole time, bounded: httpx bounds each connect, read and write alone, so an answer
dribbled a few bytes at a time could outlive the attempt's timeout. Here every socket operation of the
sync client waits at most the time left before the attempt's deadline, and so does the lookup of
Oktopost's host name (the system resolver takes no timeout: it runs on a small pool of lookup threads,
and the attempt waits for it only as long as it has left). Once the deadline has passed nothing more is
connected or sent: a process that stalled (a pause, a swap storm) between the budget's grant and its
request does not send it after its slot ran out."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as LookupTimeout
from contextvars import ContextVar, Token
from typing import Any

import httpcore
import httpx

# The current attempt's deadline on the monotonic clock. A ContextVar, because one pooled connection
# serves the attempts of many threads, each with its own deadline.
_deadline: ContextVar[float | None] = ContextVar("oktopost_attempt_deadline", default=None)

# With no time left, a socket still gets a positive timeout (0 would make it non-blocking): what has
# already arrived is taken, nothing is waited for, and the socket raises httpcore's own timeout.
_NO_TIME_LEFT = 0.001

# Host name lookups of every attempt of the process; one that hangs holds its thread, not the attempt.
_LOOKUP_THREADS = 4
_lookups = ThreadPoolExecutor(max_workers=_LOOKUP_THREADS, thread_name_prefix="oktopost-lookup")


def start_attempt(seconds: float | None) -> Token[float | None]:
    """The calling context's attempt now ends `seconds` from now (None: only httpx's own timeouts)."""
    return _deadline.set(None if seconds is None else time.monotonic() + seconds)


def end_attempt(started: Token[float | None]) -> None:
    _deadline.reset(started)


def _passed() -> bool:
    deadline = _deadline.get()
    return deadline is not None and time.monotonic() >= deadline


def _addresses(host: str, port: int) -> list[str]:
    """The addresses to connect to: `host` itself when it is one or no attempt is under way, else its
    addresses, looked up within the time the attempt has left (httpcore's ConnectTimeout past it)."""
    deadline = _deadline.get()
    if deadline is None or is_address(host):
        return [host]
    lookup = _lookups.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        found = lookup.result(timeout=max(deadline - time.monotonic(), _NO_TIME_LEFT))
    except LookupTimeout:
        raise httpcore.ConnectTimeout(f"looking up {host} outlasted the attempt") from None
    except OSError as error:  # socket.gaierror: no such host, or no resolver
        raise httpcore.ConnectError(str(error)) from error
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def is_address(host: str) -> bool:
    """Whether `host` is an IP address (v4 or v6) rather than a name to look up."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _within_deadline(timeout: float | None) -> float | None:
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = max(deadline - time.monotonic(), _NO_TIME_LEFT)
    return left if timeout is None or timeout > left else timeout


class DeadlineStream(httpcore.NetworkStream):
    """A stream whose reads, writes and TLS handshake never wait past the current attempt's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _within_deadline(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # h11 hands over an empty buffer for a request without a body: nothing to wait for, no clock read
        if buffer and _passed():
            raise httpcore.WriteTimeout("the attempt's deadline passed before this was sent")
        self._stream.write(buffer, _within_deadline(timeout) if buffer else timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, _within_deadline(timeout))
        return DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """The backend a pool already had, its connects and streams kept within the attempt's deadline."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if _passed():
            raise httpcore.ConnectTimeout("the attempt's deadline passed before connecting")
        failed: httpcore.ConnectError | None = None
        for address in _addresses(host, port):  # each in turn, as socket.create_connection does
            try:
                stream = self._backend.connect_tcp(
                    address, port, _within_deadline(timeout), local_address, socket_options
                )
            except httpcore.ConnectError as error:
                failed = error
                continue
            return DeadlineStream(stream)
        raise failed or httpcore.ConnectError(f"no address for {host}")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_unix_socket(path, _within_deadline(timeout), socket_options)
        return DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def bound_attempts(http: httpx.Client) -> bool:
    """Route every connection `http`'s own transports open (direct, and one per proxy the environment
    names) through DeadlineBackend; False when httpx keeps no pool where this looks for one.

    httpx takes no network backend, but the httpcore pools it builds do (a documented part of httpcore),
    so each pool's backend is wrapped where httpx keeps it."""
    transports = [getattr(http, "_transport", None), *getattr(http, "_mounts", {}).values()]
    bounded = False
    for transport in transports:
        pool = getattr(transport, "_pool", None) if isinstance(transport, httpx.HTTPTransport) else None
        if isinstance(pool, httpcore.ConnectionPool):
            pool._network_backend = DeadlineBackend(pool._network_backend)
            bounded = True
    return bounded
