"""Oktopost on httpx.MockTransport for the client tests: its answers, a recorder of the requests, and the
secrets that must never leak."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from worker.oktopost.errors import OktopostError

BASE = "https://api.test"
ACCOUNT = "acct-0001"
KEY = "k3y-s3cr3t-0123456789"
TOKEN = "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"
BASIC = "Basic " + base64.b64encode(f"{ACCOUNT}:{KEY}".encode()).decode()

PROFILE = {
    "Id": "003-001000000000000-10795428XXXXXXXXX",
    "Created": "2000-12-31 23:59:59",
    "Name": "John Doe's Twitter",
    "Status": "valid",
    "Network": "Twitter",
    "ImageLink": "https://pbs.twimg.com/profile_images/x",
    "NetworkUsername": "johndoe",
}
PAGES = [
    {
        "Id": "10795428XXXXXXXXX",
        "Name": "Acme Inc",
        "Network": "Facebook",
        "ImageLink": "https://graph.facebook.com/x/picture",
        "NetworkUsername": "acmeinc",
        "IsConnected": True,
    },
    {
        "Id": "20895529XXXXXXXXX",
        "Name": "Acme Products",
        "Network": "Facebook",
        "ImageLink": "https://graph.facebook.com/y/picture",
        "NetworkUsername": "acmeproducts",
        "IsConnected": False,
    },
]
PUT_CREDENTIALS = [
    {"Id": "003-001000000000000-123456", "Name": "Acme Inc", "Status": "valid", "Network": "Facebook"},
    {"Id": "003-001000000000000-2343257", "Name": "Acme Products", "Status": "valid", "Network": "Facebook"},
]

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that answers with a fixed response (or raises) and keeps the requests."""

    def __init__(self, answer: httpx.Response | Exception | Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        if isinstance(self.answer, httpx.Response):
            # A fresh copy each time: a client takes over the stream of the response it is handed.
            return httpx.Response(
                self.answer.status_code, headers=self.answer.headers, content=self.answer.content
            )
        return self.answer(request)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


def ok(**fields: Any) -> httpx.Response:
    return httpx.Response(200, json={"Result": True, **fields})


def refusal(status: int, errors: Any, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"Result": False, "Errors": errors}, headers=headers)


def raised(call: Callable[..., Any], recorder: Recorder, method: str, *args: Any) -> OktopostError:
    with pytest.raises(OktopostError) as caught:
        call(recorder, method, *args)
    error = caught.value
    # The cause (an httpx error, a pydantic error) would carry the URL or the body, hence the token.
    assert error.__cause__ is None
    assert error.__context__ is None
    assert TOKEN not in str(error)
    assert TOKEN not in repr(error)
    assert KEY not in str(error)
    return error


def invoke(call: Callable[..., Any], recorder: Recorder, step: str) -> OktopostError:
    args: tuple[Any, ...] = {
        "start": ("start_authorization", "LinkedIn", "https://app.example/cb"),
        "verify": ("verify", TOKEN),
        "complete": ("complete", TOKEN, ["1", "2"]),
        "credential": ("get_credential", "003-1"),
    }[step]
    return raised(call, recorder, args[0], *args[1:])
