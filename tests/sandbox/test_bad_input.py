"""Bad requests of every kind get the right 4xx (or `Result: false`), never a 500."""

from __future__ import annotations

import socket
import string
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.sandboxes import CALLBACK, RunningSandbox, decide

pytestmark = pytest.mark.integration

START = "/v2/social-authorization"


def param_error(name: str, message: str) -> dict[str, object]:
    return {"Result": False, "Errors": {"Param": {name: message}}}


def raw_exchange(sandbox: RunningSandbox, payload: bytes) -> bytes:
    """Sends bytes on a fresh connection and reads until the sandbox closes it."""
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_missing_parameters_are_named(api: httpx.Client) -> None:
    missing_network = api.post(START, data={"url": CALLBACK})
    assert missing_network.status_code == 400
    assert missing_network.json() == param_error("network", "Missing value for parameter network")
    missing_url = api.post(START, data={"network": "LinkedIn", "url": ""})
    assert missing_url.json() == param_error("url", "Missing value for parameter url")
    both = api.post(START)
    assert both.status_code == 400
    assert set(both.json()["Errors"]["Param"]) == {"network", "url"}


@pytest.mark.parametrize(
    ("field", "form"),
    [
        ("network", {"network": "MySpace", "url": CALLBACK}),
        ("network", {"network": "Xing", "url": CALLBACK}),
        ("url", {"network": "LinkedIn", "url": "/callback"}),
        ("url", {"network": "LinkedIn", "url": "ftp://yourapp.com/callback"}),
        ("url", {"network": "LinkedIn", "url": "not a url"}),
        ("url", {"network": "LinkedIn", "url": "https://"}),
        ("url", {"network": "LinkedIn", "url": "https://[::1"}),
        ("url", {"network": "LinkedIn", "url": "https://host:99999/x"}),
        ("type", {"network": "LinkedIn", "url": CALLBACK, "type": "company"}),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(
    api: httpx.Client, field: str, form: dict[str, str]
) -> None:
    response = api.post(START, data=form)
    assert response.status_code == 400
    body = response.json()
    assert body["Result"] is False
    assert list(body["Errors"]["Param"]) == [field]


def test_a_json_body_is_not_a_form(api: httpx.Client) -> None:
    response = api.post(START, json={"network": "LinkedIn", "url": CALLBACK})
    assert response.status_code == 400
    assert response.json()["Result"] is False


def test_non_ascii_callback_urls_are_percent_encoded(api: httpx.Client) -> None:
    redirect = api.post(START, data={"network": "LinkedIn", "url": "https://app.example/zurück?q=ü"}).json()[
        "RedirectUrl"
    ]
    location = decide(redirect, "approve").headers["location"]
    assert location.startswith("https://app.example/zur%C3%BCck?q=%C3%BC&okt=")


@pytest.mark.parametrize(
    "auth_header",
    [
        None,
        "Basic ZGVtby1hY2NvdW50Ondyb25n",
        "Basic !!!not-base64",
        "Bearer demo-key",
        "Basic",
        "Basic ZGVtbw==",
    ],
)
def test_bad_or_missing_credentials_get_401(sandbox: RunningSandbox, auth_header: str | None) -> None:
    headers = {"Authorization": auth_header} if auth_header else {}
    for method, path in (
        ("POST", START),
        ("GET", f"{START}/abc.def"),
        ("GET", "/v2/credential/1"),
        ("GET", "/v2/x"),
    ):
        response = httpx.request(
            method, f"{sandbox.url}{path}", headers=headers, data={"network": "LinkedIn"}
        )
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Basic realm="Oktopost"'
        assert response.json() == {"Result": False, "Errors": {"API": {"Error": "Invalid API credentials"}}}


def test_unknown_token_is_404_result_false(api: httpx.Client) -> None:
    for token in ("591c6053d81978.11578446867279657339b29ad2799b11ca4ff883", "x", "%00", "a" * 2000):
        response = api.get(f"{START}/{token}")
        assert response.status_code == 404
        assert response.json() == {
            "Result": False,
            "Errors": {"API": {"Error": "Token is invalid or has expired"}},
        }
    unknown_put = api.put(f"{START}/591c6053d81978.1157844686727965733a45fd2799b1?ids=123456,2343257")
    assert unknown_put.status_code == 404


def test_put_refusals(api: httpx.Client, sandbox: RunningSandbox) -> None:
    page_token = sandbox.authorize(api, "LinkedIn", "page")
    for query in ("", "?ids=", "?ids=,,", "?other=1"):
        missing = api.put(f"{START}/{page_token}{query}")
        assert missing.status_code == 400
        assert missing.json() == param_error("ids", "Missing value for parameter ids")
    offered = api.get(f"{START}/{page_token}").json()["data"][0]["Id"]
    unknown = api.put(f"{START}/{page_token}?ids={offered},999")
    assert unknown.status_code == 400
    assert unknown.json() == {"Result": False, "Errors": {"API": {"Error": "Unknown id: 999"}}}
    assert sandbox.connections() == []  # all or nothing

    profile_token = sandbox.authorize(api, "LinkedIn", "profile")
    profile_put = api.put(f"{START}/{profile_token}?ids={offered}")
    assert profile_put.status_code == 400
    assert profile_put.json()["Result"] is False


def test_duplicate_ids_connect_once(api: httpx.Client, sandbox: RunningSandbox) -> None:
    token = sandbox.authorize(api, "Twitter", "group")
    first = api.get(f"{START}/{token}").json()["data"][0]["Id"]
    credentials = api.put(f"{START}/{token}?ids={first}, {first}").json()["Credentials"]
    assert len(credentials) == 1


def test_unknown_routes_are_404_json(api: httpx.Client) -> None:
    for path in (
        "/",
        "/v1/authorizations",
        "/v2",
        "/v2/",
        "/v2/social",
        f"{START}/a/b",
        "/_sandbox/nothing",
        "/oauth",
    ):
        response = api.get(path)
        assert response.status_code == 404, path
        assert response.json()["Result"] is False


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", START, "POST"),
        ("DELETE", START, "POST"),
        ("POST", f"{START}/abc", "GET, PUT"),
        ("DELETE", f"{START}/abc", "GET, PUT"),
        ("PUT", "/v2/credential/1", "GET, DELETE"),
        ("GET", "/_sandbox/reset", "POST"),
        ("DELETE", "/_sandbox/faults", "GET, POST"),
    ],
)
def test_wrong_methods_get_405_with_allow(api: httpx.Client, method: str, path: str, allowed: str) -> None:
    response = api.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["Result"] is False


def test_head_gets_headers_without_a_body(sandbox: RunningSandbox) -> None:
    response = httpx.head(f"{sandbox.url}/_sandbox/stats")
    assert response.status_code == 405
    assert response.content == b""


@pytest.mark.parametrize(
    "payload",
    [
        b"garbage\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /v2/x HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n",
        b"GET /v2/x HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET /v2/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS ClientHello
    ],
)
def test_malformed_http_gets_4xx_and_the_connection_closes(sandbox: RunningSandbox, payload: bytes) -> None:
    answer = raw_exchange(sandbox, payload)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line[:10] == b"HTTP/1.1 4" or status_line[:12] in (b"HTTP/1.1 501", b"HTTP/1.1 505"), answer
    assert b"connection: close" in answer.lower()


def test_oversized_headers_get_431(sandbox: RunningSandbox) -> None:
    huge_header = b"GET /v2/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    assert raw_exchange(sandbox, huge_header).startswith(b"HTTP/1.1 431")
    huge_line = b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    assert raw_exchange(sandbox, huge_line).startswith(b"HTTP/1.1 431")


def test_oversized_bodies_get_413(api: httpx.Client, sandbox: RunningSandbox) -> None:
    declared = api.post(START, content=b"network=LinkedIn&url=" + b"a" * 70_000)
    assert declared.status_code == 413
    chunked = (
        b"POST /v2/social-authorization HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"8000\r\n" + b"a" * 0x8000 + b"\r\n"
        + b"8000\r\n" + b"a" * 0x8000 + b"\r\n"
        + b"10\r\n" + b"a" * 0x10 + b"\r\n0\r\n\r\n"
    )  # fmt: skip
    assert raw_exchange(sandbox, chunked).startswith(b"HTTP/1.1 413")


def test_pipelined_requests_are_answered_in_order(sandbox: RunningSandbox) -> None:
    one = b"GET /_sandbox/health HTTP/1.1\r\nHost: a\r\n\r\n"
    last = b"GET /nothing HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    answer = raw_exchange(sandbox, one * 3 + last)
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.rindex(b"HTTP/1.1 404") > answer.rindex(b"HTTP/1.1 200")


def test_http10_without_host_gets_a_redirect_url_on_the_listening_address(sandbox: RunningSandbox) -> None:
    body = b"network=LinkedIn&url=https%3A%2F%2Fyourapp.com%2Fcb"
    request = (
        b"POST /v2/social-authorization HTTP/1.0\r\nAuthorization: Basic ZGVtby1hY2NvdW50OmRlbW8ta2V5\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    answer = raw_exchange(sandbox, request)
    assert answer.startswith(b"HTTP/1.1 200")
    assert f'"RedirectUrl":"{sandbox.url}/oauth/authorize?request='.encode() in answer


def test_a_client_that_vanishes_mid_request_does_not_hurt_the_server(sandbox: RunningSandbox) -> None:
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=5) as sock:
        sock.sendall(b"POST /v2/social-authorization HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nnet")
    assert httpx.get(f"{sandbox.url}/_sandbox/health").status_code == 200


TEXT = st.text(alphabet=string.printable + "äß€\x00", max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.sampled_from(
        [START, f"{START}/", "/v2/credential/", "/oauth/authorize", "/_sandbox/faults", "/v2/"]
    ),
    suffix=TEXT,
    form=st.dictionaries(st.sampled_from(["network", "url", "type", "ids", "request", "decision"]), TEXT),
    raw_body=st.binary(max_size=80),
    authenticated=st.booleans(),
)
def test_arbitrary_requests_never_get_a_500(
    api: httpx.Client,
    method: str,
    path: str,
    suffix: str,
    form: dict[str, str],
    raw_body: bytes,
    authenticated: bool,
) -> None:
    url = path + quote(suffix, safe="/%")
    auth = api.auth if authenticated else None
    for content in (None, raw_body):
        form_body = form if content is None and method != "GET" else None
        response = api.request(method, url, params=form, data=form_body, content=content, auth=auth)
        assert response.status_code < 500, (method, url, form, response.text)
        if response.status_code >= 400 and response.headers["content-type"] == "application/json":
            assert response.json()["Result"] is False
