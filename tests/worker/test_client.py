"""The Oktopost client against httpx.MockTransport, sync and async: requests sent, answers classified
into the exception tree, and no token or key leaking into errors, reprs or log lines."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import pickle
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import SecretStr

from worker.errors import (
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
from worker.oktopost import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    USER_AGENT,
    AsyncOktopostClient,
    Credential,
    Entity,
    EntityChoice,
    OktopostClient,
    VerifiedProfile,
    canonical_entity_type,
    canonical_network,
    complete_request,
    error_messages,
    parse_retry_after,
    timeout_from_settings,
    verify_request,
)
from worker.redaction import RedactingFilter, redact, register_secret
from worker.settings import Settings

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


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """`call(recorder, "verify", TOKEN)` runs one client method through a MockTransport, sync or async."""

    def run(recorder: Recorder, method: str, *args: Any, **kwargs: Any) -> Any:
        transport = httpx.MockTransport(recorder)
        if request.param == "sync":
            with OktopostClient(BASE, ACCOUNT, KEY, transport=transport) as client:
                return getattr(client, method)(*args, **kwargs)

        async def run_async() -> Any:
            async with AsyncOktopostClient(BASE, ACCOUNT, KEY, transport=transport) as client:
                return await getattr(client, method)(*args, **kwargs)

        return asyncio.run(run_async())

    return run


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


# --- happy paths -----------------------------------------------------------------------------------


def test_start_authorization_posts_form_with_basic_auth(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(RedirectUrl="https://www.linkedin.com/oauth/v2/authorization?x=1"))
    url = call(recorder, "start_authorization", "linkedin", "https://app.example/cb/flow-1", "Page")
    assert url == "https://www.linkedin.com/oauth/v2/authorization?x=1"
    request = recorder.last
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/v2/social-authorization"
    assert request.headers["Authorization"] == BASIC
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("oktopost-connect/")
    assert parse_qs(request.content.decode()) == {
        "network": ["LinkedIn"],
        "url": ["https://app.example/cb/flow-1"],
        "type": ["page"],
    }


def test_start_authorization_type_defaults_to_profile(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(RedirectUrl="https://x.example/auth"))
    call(recorder, "start_authorization", "YouTube", "https://app.example/cb")
    assert parse_qs(recorder.last.content.decode())["type"] == ["profile"]


def test_verify_profile_gets_the_token_path(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(Credential=PROFILE))
    result = call(recorder, "verify", TOKEN)
    assert isinstance(result, VerifiedProfile)
    assert result.credential == Credential(
        id=PROFILE["Id"],
        created="2000-12-31 23:59:59",
        name="John Doe's Twitter",
        status="valid",
        network="Twitter",
        image_link="https://pbs.twimg.com/profile_images/x",
        network_username="johndoe",
    )
    request = recorder.last
    assert request.method == "GET"
    assert request.url.raw_path.decode() == f"/v2/social-authorization/{TOKEN}"
    assert request.headers["Authorization"] == BASIC
    assert request.content == b""


def test_verify_pages_offers_entities(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(token=TOKEN, data=PAGES))
    result = call(recorder, "verify", TOKEN)
    assert isinstance(result, EntityChoice)
    assert result.token == TOKEN
    assert [entity.id for entity in result.entities] == ["10795428XXXXXXXXX", "20895529XXXXXXXXX"]
    assert result.entities[0] == Entity(
        id="10795428XXXXXXXXX",
        name="Acme Inc",
        network="Facebook",
        image_link="https://graph.facebook.com/x/picture",
        network_username="acmeinc",
        is_connected=True,
    )
    assert result.entities[1].is_connected is False
    assert set(result.entities[0].model_dump()) == {
        "id",
        "name",
        "network",
        "image_link",
        "network_username",
        "is_connected",
    }


def test_verify_pages_without_echoed_token_keeps_the_one_asked_about(call: Callable[..., Any]) -> None:
    result = call(Recorder(ok(data=PAGES)), "verify", TOKEN)
    assert isinstance(result, EntityChoice)
    assert result.token == TOKEN


def test_complete_puts_ids_comma_joined_in_the_query(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(Credentials=PUT_CREDENTIALS))
    credentials = call(recorder, "complete", TOKEN, ["123456", "2343257"])
    assert [c.id for c in credentials] == ["003-001000000000000-123456", "003-001000000000000-2343257"]
    assert credentials[0].status == "valid"
    assert credentials[0].network == "Facebook"
    assert credentials[0].image_link is None
    assert credentials[0].created is None
    request = recorder.last
    assert request.method == "PUT"
    assert request.url.raw_path.decode() == f"/v2/social-authorization/{TOKEN}?ids=123456,2343257"
    assert request.headers["Authorization"] == BASIC


def test_get_credential_reads_one_back(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(Credential=PROFILE))
    credential = call(recorder, "get_credential", PROFILE["Id"])
    assert credential.id == PROFILE["Id"]
    assert credential.network_username == "johndoe"
    assert recorder.last.method == "GET"
    assert recorder.last.url.raw_path.decode() == f"/v2/credential/{PROFILE['Id']}"


def test_token_and_ids_are_url_quoted(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(Credentials=[]))
    assert call(recorder, "complete", "a/b?c", ["x y", "z&w"]) == []
    assert recorder.last.url.raw_path.decode() == "/v2/social-authorization/a%2Fb%3Fc?ids=x%20y,z%26w"


def test_unknown_extra_fields_are_tolerated(call: Callable[..., Any]) -> None:
    recorder = Recorder(
        ok(Credential={**PROFILE, "Brand": "new", "Id": 12345}, Extra={"nested": [1, 2]}, Meta=None)
    )
    result = call(recorder, "verify", TOKEN)
    assert isinstance(result, VerifiedProfile)
    assert result.credential.id == "12345"
    pages = call(Recorder(ok(token=TOKEN, data=[{**PAGES[0], "Followers": 10}], Paging={})), "verify", TOKEN)
    assert pages.entities[0].name == "Acme Inc"


def test_timeout_override_replaces_every_phase(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(Credential=PROFILE))
    call(recorder, "verify", TOKEN, timeout=1.5)
    assert recorder.last.extensions["timeout"] == {"connect": 1.5, "read": 1.5, "write": 1.5, "pool": 1.5}
    call(recorder, "verify", TOKEN)
    assert recorder.last.extensions["timeout"] == DEFAULT_TIMEOUT.as_dict()


def test_defaults_are_explicit_objects() -> None:
    assert httpx.Timeout(connect=3.0, read=10.0, write=5.0, pool=5.0) == DEFAULT_TIMEOUT
    assert httpx.Limits(max_connections=50, max_keepalive_connections=20) == DEFAULT_LIMITS
    settings = Settings(oktopost_timeout_seconds=20)
    assert timeout_from_settings(settings) == httpx.Timeout(connect=3.0, read=20.0, write=5.0, pool=5.0)
    assert timeout_from_settings(Settings(oktopost_timeout_seconds=1)).connect == 1.0


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


def invoke(call: Callable[..., Any], recorder: Recorder, step: str) -> OktopostError:
    args: tuple[Any, ...] = {
        "start": ("start_authorization", "LinkedIn", "https://app.example/cb"),
        "verify": ("verify", TOKEN),
        "complete": ("complete", TOKEN, ["1", "2"]),
        "credential": ("get_credential", "003-1"),
    }[step]
    return raised(call, recorder, args[0], *args[1:])


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


def test_transport_error_message_never_holds_a_url(call: Callable[..., Any]) -> None:
    exception = httpx.ConnectError(f"cannot reach {BASE}/v2/social-authorization/{TOKEN}")
    error = invoke(call, Recorder(exception), "verify")
    assert "api.test" not in str(error)
    assert "<url>" in str(error)


# --- no secret anywhere ---------------------------------------------------------------------------


def test_no_token_or_key_in_messages_even_when_upstream_echoes_them(call: Callable[..., Any]) -> None:
    echo = {"API": {"Error": f"Token {TOKEN} is invalid for key {KEY} ({BASIC})"}}
    error = invoke(call, Recorder(refusal(200, echo)), "verify")
    assert isinstance(error, TokenInvalidError)
    for text in (str(error), repr(error), *error.messages):
        assert TOKEN not in text
        assert KEY not in text
        assert BASIC.split()[1] not in text
    unauthorized = invoke(call, Recorder(refusal(401, {"API": {"Error": f"bad key {KEY}"}})), "verify")
    assert KEY not in str(unauthorized)
    assert "***" in str(unauthorized)


def test_reprs_hide_key_and_token() -> None:
    with OktopostClient(BASE, ACCOUNT, KEY, transport=httpx.MockTransport(Recorder(ok()))) as client:
        assert KEY not in repr(client)
        assert ACCOUNT in repr(client)
        assert KEY not in repr(vars(client))
    choice = EntityChoice(token=TOKEN, entities=[])
    assert TOKEN not in repr(choice)
    assert TOKEN not in str(choice)
    assert TOKEN not in repr(verify_request(TOKEN))
    assert TOKEN not in repr(complete_request(TOKEN, ["1"]))


def test_log_lines_never_show_token_or_key(
    call: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    call(Recorder(ok(token=TOKEN, data=PAGES)), "verify", TOKEN)
    call(Recorder(ok(Credentials=PUT_CREDENTIALS)), "complete", TOKEN, ["1"])
    with pytest.raises(TokenInvalidError):
        call(Recorder(refusal(404, {"API": {"Error": f"Token {TOKEN} expired"}})), "verify", TOKEN)
    with pytest.raises(UpstreamTransportError):
        call(Recorder(httpx.ReadTimeout("timed out")), "verify", TOKEN)
    httpx_lines = [record.getMessage() for record in caplog.records if record.name == "httpx"]
    assert any("/v2/social-authorization/***" in line for line in httpx_lines), httpx_lines
    assert TOKEN not in caplog.text
    assert KEY not in caplog.text
    assert BASIC.split()[1] not in caplog.text


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


# --- redaction ---------------------------------------------------------------------------------------


def test_redact_scrubs_tokens_authorization_and_registered_secrets() -> None:
    register_secret("registered-secret-value")
    text = (
        f"GET https://api.test/v2/social-authorization/{TOKEN}?ids=1 callback?flow=1&okt={TOKEN}&x=2 "
        "Authorization: Bearer abc.def-ghi {'authorization': 'Basic QWxhZGRpbjpvcGVu'} "
        "registered-secret-value"
    )
    clean = redact(text)
    assert TOKEN not in clean
    assert "abc.def-ghi" not in clean
    assert "QWxhZGRpbjpvcGVu" not in clean
    assert "registered-secret-value" not in clean
    assert "/v2/social-authorization/***?ids=1" in clean
    assert "okt=***&x=2" in clean
    assert redact("Basic auth is used") == "Basic auth is used"


def test_redacting_filter_renders_args_and_exceptions() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "url %s key %r", (f"/social-authorization/{TOKEN}", KEY), None
    )
    try:
        raise ValueError(f"okt={TOKEN}")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "url /social-authorization/*** key '***'"
    assert record.exc_text is not None
    assert TOKEN not in record.exc_text
    assert "okt=***" in record.exc_text


# --- vocabulary and request validation ------------------------------------------------------------


def test_canonical_network_names() -> None:
    assert canonical_network("linkedin") == "LinkedIn"
    assert canonical_network("Youtube") == "YouTube"
    assert canonical_network("YOUTUBE") == "YouTube"
    assert canonical_network(" twitter ") == "Twitter"
    assert [canonical_network(n.upper()) for n in ("facebook", "instagram")] == ["Facebook", "Instagram"]
    for bad in ("Xing", "WeChat", "", "linked in"):
        with pytest.raises(ValueError, match="unsupported network"):
            canonical_network(bad)
    assert canonical_entity_type("Page") == "page"
    assert canonical_entity_type("GROUP") == "group"
    with pytest.raises(ValueError, match="unsupported type 'company'"):
        canonical_entity_type("company")


def test_bad_arguments_are_refused_before_any_request(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok())
    for method, args, refusal in (
        ("start_authorization", ("Xing", "https://app.example/cb"), "unsupported network 'Xing'"),
        ("start_authorization", ("LinkedIn", "/relative"), "must be an absolute http"),
        ("start_authorization", ("LinkedIn", "https://app.example/cb", "company"), "unsupported type"),
        ("verify", ("",), "an okt token is required"),
        ("complete", (TOKEN, []), "must be a non-empty list"),
        ("complete", (TOKEN, "123"), "not one string"),
        ("complete", (TOKEN, ["1,2"]), "without commas"),
        ("get_credential", (" ",), "a credential id is required"),
    ):
        with pytest.raises(ValueError, match=refusal):
            call(recorder, method, *args)
    with pytest.raises(ValueError, match="timeout must be positive"):
        call(recorder, "verify", TOKEN, timeout=0)
    assert recorder.requests == []


def test_from_settings_uses_settings_and_transport() -> None:
    recorder = Recorder(ok(Credential=PROFILE))
    settings = Settings(
        oktopost_account_id=ACCOUNT, oktopost_api_key=SecretStr(KEY), oktopost_base_url=BASE + "/"
    )
    with OktopostClient.from_settings(settings, transport=httpx.MockTransport(recorder)) as client:
        client.get_credential("1")
    assert str(recorder.last.url) == f"{BASE}/v2/credential/1"
    assert recorder.last.headers["Authorization"] == BASIC

    async def run_async() -> None:
        async with AsyncOktopostClient.from_settings(
            settings, transport=httpx.MockTransport(recorder)
        ) as aclient:
            await aclient.get_credential("2")

    asyncio.run(run_async())
    assert str(recorder.last.url) == f"{BASE}/v2/credential/2"


def test_a_raw_json_body_is_what_the_handler_sees() -> None:
    # Guards the MockTransport plumbing the other tests rely on: the body arrives form-encoded, not JSON.
    recorder = Recorder(ok(RedirectUrl="https://x.example"))
    with OktopostClient(BASE, ACCOUNT, KEY, transport=httpx.MockTransport(recorder)) as client:
        client.start_authorization("Twitter", "https://app.example/cb")
    with pytest.raises(json.JSONDecodeError):
        json.loads(recorder.last.content)
