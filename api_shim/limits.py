"""Early size limits: a request too big in its URL, headers or body is refused before any route reads it.

The shim's honest requests are small (a callback's URL carries a flow id and a token, a caller's body a
few short fields), so anything far larger is refused here, as the server receives it: 414 for a path or
query string, 431 for headers, 413 for a body, whether it announces its length or streams it chunked.
uvicorn refuses what exceeds its own buffer (16 KiB of request line and headers) with a bare 400 first.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim.errors import error_response


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_path_bytes: int = 1024
    max_query_bytes: int = 4096  # an okt token is about 60 characters; `error` adds a few more
    max_header_bytes: int = 8192  # names and values of all headers together
    max_body_bytes: int = 64 * 1024  # the largest honest body, 100 selected ids, is a few KiB


class _BodyTooLarge(HTTPException):
    """Raised from `receive` as the body grows past the limit. An HTTPException, so that FastAPI passes
    it on while it reads a body (anything else becomes a 400) and the shim's handler answers a JSON 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is larger than {limit} bytes")


class RequestSizeLimits:
    """ASGI middleware enforcing `RequestLimits` on every HTTP request."""

    def __init__(self, app: ASGIApp, limits: RequestLimits | None = None) -> None:
        self.app = app
        self.limits = limits or RequestLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return

        limit = self.limits.max_body_bytes
        received = 0

        async def counted_receive() -> Message:  # a chunked body announces no length: count it
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        await self.app(scope, counted_receive, send)

    def _refusal(self, scope: Scope) -> ASGIApp | None:
        limits = self.limits
        if len(scope.get("raw_path") or scope["path"].encode()) > limits.max_path_bytes:
            return error_response(
                414, "uri_too_long", f"the path is longer than {limits.max_path_bytes} bytes"
            )
        if len(scope.get("query_string", b"")) > limits.max_query_bytes:
            return error_response(
                414, "uri_too_long", f"the query string is longer than {limits.max_query_bytes} bytes"
            )
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        if sum(len(name) + len(value) for name, value in headers) > limits.max_header_bytes:
            return error_response(
                431, "headers_too_large", f"the headers are larger than {limits.max_header_bytes} bytes"
            )
        lengths = [value for name, value in headers if name.lower() == b"content-length"]
        if lengths:
            if len(set(lengths)) > 1 or not lengths[0].strip().isdigit():
                return error_response(400, "bad_request", "Content-Length is not one whole number")
            if int(lengths[0]) > limits.max_body_bytes:
                return error_response(
                    413, "payload_too_large", f"the body is larger than {limits.max_body_bytes} bytes"
                )
        return None


def install(app: FastAPI, limits: RequestLimits | None = None) -> None:
    app.add_middleware(RequestSizeLimits, limits=limits)
