"""Request bodies: read only after the caller's key is checked, within a deadline, a bounded number at once.

A request head may announce a body and then send it a byte now and then; uvicorn serves that request,
and holds one of its `--limit-concurrency` places, for as long as the body takes. So a body on a caller
route (/v1/..., not the browsers' /v1/callback and /v1/start) is refused with 401 before a byte of it
is read unless the request presents a valid Bearer key (the hosted page's form checks its cookie before
it reads, api_shim/routes/connect.py); every body must arrive whole within `SHIM_BODY_TIMEOUT_SECONDS`
of the head (408 otherwise); and at most `MAX_BODIES_READING` bodies are being received at once, at most
`MAX_BODIES_PER_TENANT` of them one tenant's (the hosted pages' forms count as one more), 503 past
either, so one tenant's slow bodies leave room for the others'. Callbacks carry no body: whatever a
client does with bodies, they keep their places.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim.errors import ApiError, error_response
from api_shim.security import tenant_of_bearer
from worker.config.tenants import Tenants

MAX_BODIES_READING = 64  # honest bodies are a few KiB and arrive within milliseconds
MAX_BODIES_PER_TENANT = 16
BROWSERS = ""  # what the hosted pages' bodies are counted under
BROWSER_PREFIXES = ("/v1/callback/", "/v1/start/")
CLOSE = {"Connection": "close"}  # the rest of a body not read must not be taken for the next request


class _BodyTooSlow(HTTPException):
    """Raised from `receive` when the body's time is up; an HTTPException, so FastAPI passes it on while
    it reads a body and the shim's handler answers a JSON 408 (see api_shim/limits.py's _BodyTooLarge)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the body did not arrive within {seconds:g} seconds", headers=CLOSE)


def has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


def _authorization(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return bytes(value).decode("latin-1")
    return None


class BodyGate:
    """ASGI middleware: the rules above, for every HTTP request that announces a body."""

    def __init__(self, app: ASGIApp, tenants: Tenants, timeout: float) -> None:
        self.app = app
        self.tenants = tenants
        self.timeout = timeout
        self.reading: dict[str, int] = {}  # bodies being received now in this process, by tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not has_body(scope):
            await self.app(scope, receive, send)
            return
        tenant, refusal = self._admission(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        self.reading[tenant] = self.reading.get(tenant, 0) + 1
        reading = True
        deadline = asyncio.get_running_loop().time() + self.timeout

        def done_reading() -> None:
            nonlocal reading
            if reading:
                reading = False
                self.reading[tenant] -= 1
                if not self.reading[tenant]:
                    del self.reading[tenant]

        async def timed_receive() -> Message:
            if not reading:
                return await receive()
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.0))
            except TimeoutError:
                done_reading()
                raise _BodyTooSlow(self.timeout) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done_reading()
            return message

        try:
            await self.app(scope, timed_receive, send)
        finally:
            done_reading()

    def _admission(self, scope: Scope) -> tuple[str, ASGIApp | None]:
        """Whose body this is (a tenant's name, or BROWSERS), and the refusal when it may not be read."""
        path, tenant = str(scope["path"]), BROWSERS
        if path.startswith("/v1/") and not path.startswith(BROWSER_PREFIXES):
            try:
                tenant = tenant_of_bearer(_authorization(scope), self.tenants)
            except ApiError as error:
                headers = {**(error.headers or {}), **CLOSE}
                return tenant, error_response(error.status, error.code, error.message, headers)
        if (
            sum(self.reading.values()) >= MAX_BODIES_READING
            or self.reading.get(tenant, 0) >= MAX_BODIES_PER_TENANT
        ):
            headers = {"Retry-After": "1", **CLOSE}
            busy = error_response(503, "busy", "too many request bodies are arriving; try again", headers)
            return tenant, busy
        return tenant, None


def install(app: FastAPI, tenants: Tenants, timeout: float) -> None:
    app.add_middleware(BodyGate, tenants=tenants, timeout=timeout)
