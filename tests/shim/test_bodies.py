"""Request bodies: a caller route's body is not read before its key is checked, a body must arrive within
SHIM_BODY_TIMEOUT_SECONDS, and the hosted page's form checks the cookie before it reads."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import MutableMapping
from typing import Any

import pytest

from tests.support.shim import CALLER, Shim, open_shim

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


class DrippingBody:
    """An ASGI `receive` whose body never ends: it counts what the app asked of it."""

    def __init__(self) -> None:
        self.asked = 0

    async def __call__(self) -> dict[str, Any]:
        self.asked += 1
        if self.asked == 1:
            return {"type": "http.request", "body": b'{"network": "Link', "more_body": True}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


async def _call(shim: Shim, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """The app called straight with a body of 60000 announced bytes that never comes whole: the answer's
    status, and its headers with `asked` (the body's bytes read) and `body` (the answer's) added."""
    answer: dict[str, Any] = {}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            answer["body"] = answer.get("body", b"") + message.get("body", b"")

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-length", b"60000"), (b"content-type", b"application/json"), *raw],
        "client": ("127.0.0.1", 5000),
        "server": ("shim.example", 443),
    }
    body = DrippingBody()
    await asyncio.wait_for(shim.app(scope, body, send), 10)
    answer["asked"] = str(body.asked)
    return answer["status"], answer["headers"] | {
        "asked": answer["asked"],
        "body": answer.get("body", b"").decode(),
    }


async def test_a_body_on_a_caller_route_without_a_key_is_refused_before_it_is_read(shim: Shim) -> None:
    for path in ("/v1/authorizations", "/v1/webhooks", "/v1/authorizations/x/selection"):
        status, headers = await _call(shim, "POST", path, {"Authorization": "Bearer not-a-key"})
        assert status == 401
        assert headers["asked"] == "0"  # not a byte of the body was read
        assert headers["connection"] == "close"


async def test_a_body_that_does_not_arrive_in_time_is_a_408() -> None:
    async with open_shim(shim_body_timeout_seconds=0.5) as shim:
        started = time.monotonic()
        status, headers = await _call(shim, "POST", "/v1/authorizations", CALLER)
        took = time.monotonic() - started
    assert status == 408
    assert headers["connection"] == "close"
    assert json.loads(headers["body"])["error"]["code"] == "request_timeout"
    assert 0.4 < took < 2.0


async def test_the_selection_form_checks_the_cookie_before_it_reads_the_body(shim: Shim) -> None:
    flow = shim.flow_awaiting_selection()
    status, headers = await _call(shim, "POST", f"/connect/{flow.flow_id}/selection", {})
    assert status == 403
    assert headers["asked"] == "0"
