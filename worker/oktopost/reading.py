"""Reading an answer: the one place that turns status, `Result` and `Errors` into a result or an error
of `worker.oktopost.errors` (see the tree drawn there for what is retryable)."""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import ValidationError

from worker.observing.redaction import MASK, redact
from worker.oktopost.answers import (
    Answer,
    CompleteAnswer,
    Credential,
    CredentialAnswer,
    CredentialPage,
    Entity,
    EntityChoice,
    StartAnswer,
    VerifiedProfile,
)
from worker.oktopost.errors import (
    MalformedAnswerError,
    MismatchedAnswerError,
    RejectedError,
    ServerError,
    ThrottledError,
    TokenInvalidError,
    UnauthorizedError,
    UpstreamTransportError,
)

_TOKEN_IN_PATH = re.compile(r"/social-authorization/([^/?#]+)")
# Bounded both ways: the words must stand within 80 characters of each other, and only the first
# MESSAGE_CHARS of each message are read, so no upstream text, however long, makes the search slow.
_TOKEN_TROUBLE = re.compile(
    r"(?i)\btoken\b.{0,80}?\b(invalid|expired?|unknown|not found|does not exist|no longer)\b"
    r"|\b(invalid|expired|unknown)\b.{0,80}?\btoken\b"
)
MESSAGE_CHARS = 500


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: "120" or an HTTP-date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # RFC 9110 dates are GMT; parsedate gives naive for "-0000"
        moment = moment.replace(tzinfo=UTC)
    seconds = moment.timestamp() - (time.time() if now is None else now)
    return float(max(0, math.ceil(seconds)))


def error_messages(errors: object) -> list[str]:
    """Every message in an `Errors` value, whatever its form: object keyed by kind, list, string, nested.

    `{"API": {"Error": "x"}}` -> ["x"]; `{"Param": {"get": "Missing value for parameter y"}}` ->
    ["Missing value for parameter y"]; `[]` -> []; `"z"` -> ["z"].
    """
    found: list[str] = []

    def walk(value: object) -> None:
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, str):
            text = " ".join(value.split())
            if text and text not in found:
                found.append(text)
        elif isinstance(value, int | float):
            walk(str(value))
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(errors)
    return found


def _token_of(response: httpx.Response) -> str | None:
    """The token the request was about, read back from its path, so messages can be scrubbed of it."""
    try:
        request = response.request
    except RuntimeError:  # a Response built by hand has no request
        return None
    match = _TOKEN_IN_PATH.search(request.url.path)
    return match.group(1) if match else None


def _scrub(messages: list[str], token: str | None) -> list[str]:
    if token and len(token) >= 4:
        messages = [message.replace(token, MASK).replace(quote(token, safe=""), MASK) for message in messages]
    return [redact(message) for message in messages]


def read_answer(response: httpx.Response, *, about_token: bool = False) -> dict[str, Any]:
    """The JSON body of a successful answer (`Result: true`, 2xx), or the fitting error of the tree.

    `about_token` says the call named an okt token (verify, complete): then a 404, or a refusal whose
    message says the token is invalid or expired, is `TokenInvalidError`.
    """
    status = response.status_code
    body: object = None
    try:
        body = response.json()
    except ValueError:  # not JSON, or not UTF-8
        body = None
    answer = body if isinstance(body, dict) and isinstance(body.get("Result"), bool) else None
    messages = _scrub(error_messages(answer.get("Errors")) if answer else [], _token_of(response))

    # The status decides first: a gateway's 503 is transient even with a `Result: false` body.
    if status in (401, 403):
        raise UnauthorizedError(status, messages)
    if status == 429:
        raise ThrottledError(parse_retry_after(response.headers.get("Retry-After")), status=status)
    if status >= 500:
        raise ServerError(status, messages)
    token_trouble = about_token and any(
        _TOKEN_TROUBLE.search(message[:MESSAGE_CHARS]) for message in messages
    )
    if 400 <= status < 500:
        if about_token and (status == 404 or token_trouble):
            raise TokenInvalidError(messages, status=status)
        raise RejectedError(messages, status=status)
    if answer is None:
        what = "a body that is not JSON" if body is None else "JSON without a boolean Result"
        raise MalformedAnswerError(f"Oktopost answered HTTP {status} with {what}", status=status)
    if answer["Result"] is False:
        # Oktopost refuses with HTTP 200 too: a 200 is not success until Result is true.
        raise (TokenInvalidError if token_trouble else RejectedError)(messages, status=status)
    if not response.is_success:  # a 1xx/3xx that claims success: we never follow redirects
        raise MalformedAnswerError(f"Oktopost answered unexpected HTTP {status}", status=status)
    return answer


_A = TypeVar("_A", bound=Answer)


def _shaped(model: type[_A], answer: dict[str, Any], status: int) -> _A:
    problem: str | None = None
    try:
        return model.model_validate(answer)
    except ValidationError as error:
        # Only where and what: the offending value could be a token.
        first = error.errors(include_url=False, include_input=False, include_context=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "answer"
        problem = f"{where}: {first['msg']}"
    # Raised outside the except block, so the ValidationError (holding the input) is not its __context__.
    raise MalformedAnswerError(f"Oktopost answered with the wrong shape ({problem})", status=status)


def parse_start(response: httpx.Response) -> str:
    """Step 1: the URL to send the user's browser to."""
    answer = _shaped(StartAnswer, read_answer(response), response.status_code)
    if urlsplit(answer.redirect_url).scheme not in ("http", "https"):
        raise MalformedAnswerError("Oktopost answered with a RedirectUrl that is not http(s)", status=200)
    return answer.redirect_url


def parse_verify(response: httpx.Response) -> VerifiedProfile | EntityChoice:
    """Step 3: a connected profile, or the pages/groups to choose from."""
    answer = read_answer(response, about_token=True)
    if "Credential" in answer:
        return _shaped(VerifiedProfile, answer, response.status_code)
    if "data" in answer:
        if not answer.get("token"):
            # The reference always echoes it; if it ever does not, the token we asked about is the one.
            answer = {**answer, "token": _token_of(response)}
        return _shaped(EntityChoice, answer, response.status_code)
    raise MalformedAnswerError("Oktopost answered a verify with neither Credential nor data", status=200)


def check_verify_fits(
    answer: VerifiedProfile | EntityChoice, network: str, entity_type: str
) -> VerifiedProfile | EntityChoice:
    """The verify answer, when it is for the flow's network and entity type; else MismatchedAnswerError.

    A Credential answers a profile, entities answer a page or group; every network in it must be the
    flow's (compared without case: Oktopost's own SDK spells YouTube two ways), and is passed on as the
    flow spells it. An entity whose id holds a comma could never be sent back (the completion's ids are
    comma-separated) and is not offered; entities answering a page or group flow with none that can be
    chosen is no choice at all.
    """
    if isinstance(answer, VerifiedProfile):
        kind, networks = "a connected profile", [answer.credential.network]
    else:
        kind, networks = "entities to choose from", [entity.network for entity in answer.entities]
    if (entity_type == "profile") != isinstance(answer, VerifiedProfile):
        raise MismatchedAnswerError(f"Oktopost answered a {entity_type} flow's verify with {kind}")
    _same_network(networks, network, "verify")
    if isinstance(answer, VerifiedProfile):
        if answer.credential.network == network:  # as Oktopost's answers spell it: nothing to copy
            return answer
        return answer.model_copy(update={"credential": _spelled(answer.credential, network)})
    choosable = [_spelled(entity, network) for entity in answer.entities if "," not in entity.id]
    if not choosable:
        raise MismatchedAnswerError(
            f"Oktopost answered a {entity_type} flow's verify with nothing to choose from"
        )
    return answer.model_copy(update={"entities": choosable})


def check_complete_fits(credentials: list[Credential], network: str) -> list[Credential]:
    """The completion's credentials, when it connected something on the flow's network (passed on as the
    flow spells it); else MismatchedAnswerError: a flow is never reported completed with nothing, or
    with another network's accounts, connected."""
    if not credentials:
        raise MismatchedAnswerError("Oktopost answered the completion with no credential connected")
    _same_network([credential.network for credential in credentials], network, "completion")
    return [_spelled(credential, network) for credential in credentials]


_Named = TypeVar("_Named", Credential, Entity)


def _spelled(answer: _Named, network: str) -> _Named:
    """`answer` with its network spelled as the flow's (a copy only when it is spelled otherwise)."""
    return answer if answer.network == network else answer.model_copy(update={"network": network})


def _same_network(networks: list[str], network: str, call: str) -> None:
    others = sorted({name for name in networks if name.strip().lower() != network.lower()})
    if others:
        raise MismatchedAnswerError(
            f"Oktopost answered a {network} flow's {call} for another network ({', '.join(others)[:100]})"
        )


def parse_complete(response: httpx.Response) -> list[Credential]:
    """Step 4: the credentials of the pages/groups just connected."""
    return _shaped(CompleteAnswer, read_answer(response, about_token=True), response.status_code).credentials


def parse_credential(response: httpx.Response) -> Credential:
    """`GET /v2/credential/{id}`: one credential read back."""
    return _shaped(CredentialAnswer, read_answer(response), response.status_code).credential


def parse_credential_page(response: httpx.Response) -> CredentialPage:
    """`GET /v2/credential`: one page of the account's credentials and how many there are in all."""
    return _shaped(CredentialPage, read_answer(response), response.status_code)


def parse_deletion(response: httpx.Response) -> bool:
    """`DELETE /v2/credential/{id}`: True when removed now, False when Oktopost knew no such credential
    (404): either way it is gone, so a retry after a lost answer is as good as the first call."""
    if response.status_code == 404:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("Result") is False:
            return False
    read_answer(response)
    return True


def transport_failure(error: httpx.TransportError) -> UpstreamTransportError:
    """Name what failed, never the URL: httpx messages seldom hold one, and `_URL` masks any that does."""
    kind = "transport error"
    for error_type, name in _TRANSPORT_KINDS:
        if isinstance(error, error_type):
            kind = name
            break
    text = str(error)
    if isinstance(error, httpx.RemoteProtocolError):
        # httpcore: "Server disconnected without sending a response." is a lost answer.
        kind = "connection closed without an answer" if "disconnect" in text.lower() or not text else kind
    detail = _URL.sub("<url>", redact(text.splitlines()[0] if text else ""))[:200]
    return UpstreamTransportError(kind, detail)


_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.\-]*://\S+")
_TRANSPORT_KINDS: tuple[tuple[type[httpx.TransportError], str], ...] = (
    (httpx.ConnectTimeout, "connect timeout"),
    (httpx.ReadTimeout, "read timeout"),
    (httpx.WriteTimeout, "write timeout"),
    (httpx.PoolTimeout, "connection pool timeout"),
    (httpx.TimeoutException, "timeout"),
    (httpx.ConnectError, "connection failed"),
    (httpx.ReadError, "connection broken while reading the answer"),
    (httpx.WriteError, "connection broken while sending the request"),
    (httpx.RemoteProtocolError, "invalid HTTP answer"),
    (httpx.LocalProtocolError, "could not send the request"),
    (httpx.ProxyError, "proxy error"),
    (httpx.UnsupportedProtocol, "unsupported URL scheme"),
)
