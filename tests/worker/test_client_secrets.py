"""No token or key leaks from the Oktopost client: not into errors, reprs or log lines, even when
Oktopost echoes them; the redaction behind it."""

from __future__ import annotations

import http.server
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.mock_oktopost import (
    ACCOUNT,
    BASE,
    BASIC,
    KEY,
    PAGES,
    PUT_CREDENTIALS,
    TOKEN,
    Recorder,
    invoke,
    ok,
    refusal,
)
from worker.observing.redaction import RedactingFilter, install_log_redaction, redact, register_secret
from worker.oktopost import EntityChoice, OktopostClient, complete_request, verify_request
from worker.oktopost.errors import OktopostError, TokenInvalidError, UpstreamTransportError


def test_transport_error_message_never_holds_a_url(call: Callable[..., Any]) -> None:
    exception = httpx.ConnectError(f"cannot reach {BASE}/v2/social-authorization/{TOKEN}")
    error = invoke(call, Recorder(exception), "verify")
    assert "api.test" not in str(error)
    assert "<url>" in str(error)


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


def test_debug_lines_of_a_real_connection_never_show_a_token_an_answer_header_carries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """httpcore logs each answer's headers at DEBUG: a Location (or Set-Cookie) of the upstream, or of a
    proxy before it, holding the token is not shown; the status is."""

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"https://elsewhere.test/?tok={TOKEN}")
            self.send_header("Set-Cookie", f"session={TOKEN}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        caplog.set_level(logging.DEBUG)
        install_log_redaction()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with OktopostClient(base, ACCOUNT, KEY) as client, pytest.raises(OktopostError):
            client.verify(TOKEN)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    headers_lines = [
        r.getMessage() for r in caplog.records if "receive_response_headers.complete" in r.getMessage()
    ]
    assert headers_lines
    assert all("302" in line for line in headers_lines), headers_lines
    assert TOKEN not in caplog.text
    assert KEY not in caplog.text


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
