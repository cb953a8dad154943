"""A small HTTP/1.1 server on asyncio and h11: keep-alive, size limits, and answers that never come.

The sandbox needs what ASGI servers cannot give: close a connection after doing the work but before
answering (a lost answer), and hang an answer until the client gives up. A handler therefore returns
either a `Response` or one of the `Silence` markers.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote, urlsplit

import h11

SERVER_NAME = "oktopost-sandbox"


@dataclass(frozen=True, slots=True)
class Limits:
    """Size and time limits of one connection; the defaults suit a local test double."""

    max_head_bytes: int = 64 * 1024  # request line + headers; past it: 431
    max_body_bytes: int = 64 * 1024  # past it: 413
    read_chunk_bytes: int = 64 * 1024
    read_timeout_s: float = 120.0  # an idle keep-alive connection or a stalled request is closed after this


@dataclass(frozen=True, slots=True)
class Request:
    """One fully read request. Header names are lower-case; `path` is percent-decoded."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


@dataclass(slots=True)
class Response:
    """An answer to send; Content-Length, Date and Server are added when it is sent."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


class Silence(enum.Enum):
    """Ways of not answering at all."""

    DROP = "drop"  # close the connection without a response
    HANG = "hang"  # never answer; wait until the client goes away


Answer = Response | Silence
Handler = Callable[[Request], Awaitable[Answer]]


def json_response(status: int, payload: object, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, "application/json", headers or [])


def html_response(status: int, page: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, page.encode(), "text/html; charset=utf-8", headers or [])


class _Refusal(Exception):
    """A request refused before it reached the handler (too large, malformed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpServer:
    """Serves one `Handler` on a TCP socket until `close()`."""

    def __init__(self, handler: Handler, limits: Limits | None = None) -> None:
        self._handler = handler
        self._limits = limits or Limits()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._date_second = -1
        self._date_header = ""

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Start listening; answers the address actually bound (useful with port 0)."""
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        """Stop listening and end every open connection, hanging ones included."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.max_head_bytes)
        try:
            while True:
                request = await self._read_request(conn, reader, writer)
                if request is None:
                    return
                answer = await self._answer(request)
                if answer is Silence.DROP:
                    return
                if answer is Silence.HANG:
                    await self._wait_for_eof(reader)
                    return
                writer.write(self._encode(conn, request.method, answer))
                await writer.drain()
                if answer.close or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except _Refusal as refusal:
            await self._refuse(writer, refusal.status, refusal.message)
        except h11.RemoteProtocolError as exc:
            await self._refuse(writer, exc.error_status_hint, "Malformed HTTP request")
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # only close() cancels a connection: ending it is the point, not an error to report
        finally:
            self._connections.discard(task)
            writer.close()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                async with asyncio.timeout(self._limits.read_timeout_s):
                    data = await reader.read(self._limits.read_chunk_bytes)
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                head = event
                # h11 enforces max_incomplete_event_size only on a head that is still incomplete.
                if _head_size(event) > self._limits.max_head_bytes:
                    raise _Refusal(431, "Request line and headers too large")
                if event.http_version not in (b"1.0", b"1.1"):
                    raise _Refusal(505, "HTTP version not supported")
                declared = _content_length(event)
                if declared is not None and declared > self._limits.max_body_bytes:
                    raise _Refusal(413, "Request body too large")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._limits.max_body_bytes:
                    raise _Refusal(413, "Request body too large")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return _make_request(head, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:  # PAUSED cannot happen: we always start the next cycle only when both sides are done
                return None

    async def _answer(self, request: Request) -> Answer:
        try:
            return await self._handler(request)
        except Exception:
            # A genuine bug: tell the client, keep serving, and leave the traceback for the tests to find.
            traceback.print_exc(file=sys.stderr)
            return json_response(
                500, {"Result": False, "Errors": {"API": {"Error": "Internal sandbox error"}}}
            )

    async def _wait_for_eof(self, reader: asyncio.StreamReader) -> None:
        # Whatever the client sends after a hung request is read and ignored, so this wakes only on I/O.
        while await reader.read(self._limits.read_chunk_bytes):
            pass

    def _encode(self, conn: h11.Connection, method: str, response: Response) -> bytes:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("date", self._date()),
            ("server", SERVER_NAME),
            *response.headers,
        ]
        if response.close:
            headers.append(("connection", "close"))
        reason = _reason(response.status)
        out = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if response.body and method != "HEAD":
            out += conn.send(h11.Data(data=response.body))
        out += conn.send(h11.EndOfMessage())
        return out

    async def _refuse(self, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        # Written by hand: h11's state may be broken by now, and the connection closes after it anyway.
        body = json.dumps({"Result": False, "Errors": {"HTTP": {"Error": message}}}).encode()
        head = (
            f"HTTP/1.1 {status} {_reason(status)}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"date: {self._date()}\r\nserver: {SERVER_NAME}\r\nconnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(head.encode() + body)
            await writer.drain()

    def _date(self) -> str:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_header = formatdate(now, usegmt=True)
        return self._date_header


def _head_size(head: h11.Request) -> int:
    header_bytes = sum(len(name) + len(value) + 4 for name, value in head.headers)  # ": " and CRLF
    return len(head.method) + len(head.target) + header_bytes


def _content_length(head: h11.Request) -> int | None:
    for name, value in head.headers:
        if name == b"content-length":
            return int(value)  # h11 has already checked it is a number
    return None


def _make_request(head: h11.Request, body: bytes) -> Request:
    target = head.target.decode("latin-1")
    if target.startswith("/"):
        path, _, query = target.partition("?")
    else:  # absolute-form ("GET http://host/path HTTP/1.1") or something odd ("*")
        try:
            parts = urlsplit(target)
        except ValueError:
            raise _Refusal(400, "Malformed request target") from None
        path, query = parts.path or "/", parts.query
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}
    return Request(head.method.decode("ascii"), unquote(path), query, headers, body)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
