"""The Oktopost client's answers, sync and async: each one classified into the exception tree, with
its messages, Retry-After and transport failures; the errors survive pickling."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from tests.support.mock_oktopost import PROFILE, Recorder, invoke, ok, refusal
from worker.oktopost import error_messages, parse_retry_after, read_answer
from worker.oktopost.errors import (
    MalformedAnswerError,
    OktopostError,
    RejectedError,
    ServerError,
    ThrottledError,
    TokenInvalidError,
    TransientError,
    UnauthorizedError,
    UpstreamTransportError,
)

# --- the exception tree, one answer per row -----------------------------------------------------------

ROWS: list[tuple[str, httpx.Response, type[OktopostError], str]] = [
    ("200 Result false", refusal(200, {"API": {"Error": "Network not allowed"}}), RejectedError, "verify"),
    (
        "400 Param errors",
        refusal(400, {"Param": {"get": "Missing value for parameter network"}}),
        RejectedError,
        "start",
    ),
    ("200 Errors empty list", refusal(200, []), RejectedError, "start"),
    ("not JSON", httpx.Response(200, text="<html>gateway</html>"), MalformedAnswerError, "verify"),
    ("200 without Result", httpx.Response(200, json={"Credential": PROFILE}), MalformedAnswerError, "verify"),
    ("Result not boolean", httpx.Response(200, json={"Result": "true"}), MalformedAnswerError, "verify"),
    ("JSON list", httpx.Response(200, json=[1, 2]), MalformedAnswerError, "start"),
    ("Result true, wrong shape", ok(Credential={"Name": "no id"}), MalformedAnswerError, "verify"),
    ("Result true, nothing", ok(), MalformedAnswerError, "verify"),
    ("401", refusal(401, {"API": {"Error": "Invalid API credentials"}}), UnauthorizedError, "verify"),
    ("403", httpx.Response(403, text="Forbidden"), UnauthorizedError, "start"),
    ("404 on a token call", refusal(404, {"API": {"Error": "Not found"}}), TokenInvalidError, "verify"),
    ("404 on complete", httpx.Response(404, text="nope"), TokenInvalidError, "complete"),
    (
        "404 on a credential",
        refusal(404, {"API": {"Error": "Credential not found"}}),
        RejectedError,
        "credential",
    ),
    (
        "400 token expired",
        refusal(400, {"API": {"Error": "Token has expired"}}),
        TokenInvalidError,
        "complete",
    ),
    ("200 token invalid", refusal(200, {"API": {"Error": "Invalid token"}}), TokenInvalidError, "verify"),
    ("409 other 4xx", httpx.Response(409, text=""), RejectedError, "complete"),
    ("429", httpx.Response(429, json={"Result": False, "Errors": []}), ThrottledError, "verify"),
    ("500", httpx.Response(500, text="boom"), ServerError, "verify"),
    ("503 Result false", refusal(503, {"API": {"Error": "maintenance"}}), ServerError, "start"),
]

EXPECTED = {
    MalformedAnswerError: (True, "upstream_unavailable"),
    ThrottledError: (True, "upstream_unavailable"),
    ServerError: (True, "upstream_unavailable"),
    UpstreamTransportError: (True, "upstream_unavailable"),
    UnauthorizedError: (False, "unauthorized"),
    RejectedError: (False, "upstream_rejected"),
    TokenInvalidError: (False, "token_invalid"),
}


@pytest.mark.parametrize(
    ("answer", "expected", "step"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS]
)
def test_each_answer_maps_to_its_branch_of_the_tree(
    call: Callable[..., Any], answer: httpx.Response, expected: type[OktopostError], step: str
) -> None:
    error = invoke(call, Recorder(answer), step)
    assert type(error) is expected
    assert (error.retryable, error.code) == EXPECTED[expected]
    assert isinstance(error, TransientError) is error.retryable
    assert "\n" not in str(error)


def test_refusal_messages_come_from_every_errors_form(call: Callable[..., Any]) -> None:
    api = invoke(call, Recorder(refusal(200, {"API": {"Error": "Network not allowed"}})), "start")
    assert isinstance(api, RejectedError)
    assert api.messages == ["Network not allowed"]
    assert api.status == 200
    assert "Network not allowed" in str(api)
    param = invoke(call, Recorder(refusal(400, {"Param": {"get": "Missing value for parameter x"}})), "start")
    assert isinstance(param, RejectedError)
    assert param.messages == ["Missing value for parameter x"]
    empty = invoke(call, Recorder(refusal(200, [])), "start")
    assert isinstance(empty, RejectedError)
    assert empty.messages == ["HTTP 200"]
    nothing = invoke(call, Recorder(httpx.Response(422, text="")), "start")
    assert isinstance(nothing, RejectedError)
    assert nothing.messages == ["HTTP 422"]
    assert nothing.status == 422


def test_errors_are_flattened_whatever_their_form() -> None:
    assert error_messages({"API": {"Error": "a"}}) == ["a"]
    assert error_messages({"Param": {"get": "Missing value for parameter x", "post": "b"}}) == [
        "Missing value for parameter x",
        "b",
    ]
    assert error_messages([]) == []
    assert error_messages(None) == []
    assert error_messages({}) == []
    assert error_messages("  just\n a string ") == ["just a string"]
    assert error_messages([["a", {"x": ["b", 3]}], "a", True]) == ["a", "b", "3"]


def test_server_error_keeps_its_status(call: Callable[..., Any]) -> None:
    error = invoke(call, Recorder(httpx.Response(503, text="down")), "verify")
    assert isinstance(error, ServerError)
    assert error.status == 503
    assert "HTTP 503" in str(error)


def test_429_retry_after_in_seconds(call: Callable[..., Any]) -> None:
    error = invoke(call, Recorder(httpx.Response(429, headers={"Retry-After": "7"}, text="")), "verify")
    assert isinstance(error, ThrottledError)
    assert error.retry_after == 7.0
    assert error.retryable


def test_429_retry_after_as_http_date(call: Callable[..., Any]) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    error = invoke(call, Recorder(httpx.Response(429, headers={"Retry-After": when}, text="")), "verify")
    assert isinstance(error, ThrottledError)
    assert error.retry_after is not None
    assert 27 <= error.retry_after <= 31


def test_429_without_retry_after(call: Callable[..., Any]) -> None:
    error = invoke(call, Recorder(httpx.Response(429, text="slow down")), "start")
    assert isinstance(error, ThrottledError)
    assert error.retry_after is None


def test_retry_after_parsing() -> None:
    now = time.time()
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
    past = format_datetime(datetime.fromtimestamp(now - 60, UTC), usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


TRANSPORT_ERRORS = [
    (httpx.ConnectError("[Errno 111] Connection refused"), "connection failed"),
    (httpx.ConnectTimeout("timed out"), "connect timeout"),
    (httpx.ReadTimeout("timed out"), "read timeout"),
    (httpx.WriteTimeout("timed out"), "write timeout"),
    (httpx.PoolTimeout("no connection"), "connection pool timeout"),
    (httpx.ReadError("reset by peer"), "connection broken while reading the answer"),
    (
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        "connection closed without an answer",
    ),
]


@pytest.mark.parametrize(("exception", "kind"), TRANSPORT_ERRORS, ids=[kind for _, kind in TRANSPORT_ERRORS])
def test_transport_errors_are_transient_and_name_their_kind(
    call: Callable[..., Any], exception: Exception, kind: str
) -> None:
    error = invoke(call, Recorder(exception), "verify")
    assert isinstance(error, UpstreamTransportError)
    assert error.kind == kind
    assert kind in str(error)
    assert (error.retryable, error.code) == (True, "upstream_unavailable")
    assert "api.test" not in str(error)
    assert "social-authorization" not in str(error)


def test_errors_survive_pickling_with_their_attributes() -> None:
    for error in (
        ThrottledError(12.0),
        RejectedError(["a", "b"], status=400),
        TokenInvalidError(["expired"], status=404),
        UnauthorizedError(401, ["no"]),
        UpstreamTransportError("read timeout"),
        ServerError(502),
        MalformedAnswerError("x", status=200),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert vars(copy) == vars(error)


def test_a_long_refusal_text_is_classified_quickly() -> None:
    """Upstream text of any length: the token-trouble search reads a bounded prefix with a bounded gap."""
    body = {"Result": False, "Errors": {"API": {"Error": "token " * 10_000 + "is fine"}}}
    request = httpx.Request("GET", "https://api.test/v2/social-authorization/591c6053d81978.1157")
    started = time.perf_counter()
    with pytest.raises(RejectedError) as refused:
        read_answer(httpx.Response(200, json=body, request=request), about_token=True)
    assert time.perf_counter() - started < 0.5
    assert not isinstance(refused.value, TokenInvalidError)
    expired = {"Result": False, "Errors": {"API": {"Error": "The token has expired"}}}
    with pytest.raises(TokenInvalidError):
        read_answer(httpx.Response(200, json=expired, request=request), about_token=True)
