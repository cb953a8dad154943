"""The Oktopost social-authorization client: each call is built once and each answer parsed once, then
sent by `OktopostClient` (sync, for the Celery worker's threads) or `AsyncOktopostClient` (the shim).

    start_authorization_request() -> OktopostCall --send--> httpx.Response --call.parse--> result
                                                      |                        |
                                        TransportError -> UpstreamTransportError   read_answer(): status,
                                                                                  Result, Errors -> tree

Every failure is one of `worker.errors`; see the tree drawn there for what is retryable.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from worker.errors import (
    MalformedAnswerError,
    OktopostError,
    RejectedError,
    ServerError,
    ThrottledError,
    TokenInvalidError,
    UnauthorizedError,
    UpstreamTransportError,
)
from worker.redaction import MASK, install_log_redaction, redact, register_basic_credentials
from worker.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# Vocabulary

NETWORKS = ("Twitter", "Facebook", "LinkedIn", "YouTube", "Instagram")
ENTITY_TYPES = ("profile", "page", "group")

# Oktopost's own SDK spells YouTube both ways; lower-casing makes both (and any other casing) match.
_NETWORK_BY_LOWER = {network.lower(): network for network in NETWORKS}

AUTHORIZATION_PATH = "/v2/social-authorization"
CREDENTIAL_PATH = "/v2/credential"


def canonical_network(name: str) -> str:
    """Case-insensitive: `linkedin` -> LinkedIn, `Youtube` -> YouTube; ValueError for any other network."""
    canonical = _NETWORK_BY_LOWER.get(name.strip().lower()) if isinstance(name, str) else None
    if canonical is None:
        raise ValueError(f"unsupported network {name!r}; expected one of {', '.join(NETWORKS)}")
    return canonical


def canonical_entity_type(name: str) -> str:
    """Case-insensitive: `Page` -> page; ValueError for anything but profile, page or group."""
    canonical = name.strip().lower() if isinstance(name, str) else ""
    if canonical not in ENTITY_TYPES:
        raise ValueError(f"unsupported type {name!r}; expected one of {', '.join(ENTITY_TYPES)}")
    return canonical


# ---------------------------------------------------------------------------------------------------
# Configuration

# connect: a healthy API accepts within a few hundred ms; read: Oktopost talks to the social network
# before it answers a verify, so give it longer; pool: waiting for a free connection means we are
# overloaded, better to fail over to a retry than queue.
DEFAULT_TIMEOUT = httpx.Timeout(connect=3.0, read=10.0, write=5.0, pool=5.0)
# The account may make 60 calls a minute in all, so 50 connections per process is already generous.
DEFAULT_LIMITS = httpx.Limits(max_connections=50, max_keepalive_connections=20)


def _package_version() -> str:
    try:
        return version("oktopost-connect")
    except PackageNotFoundError:
        return "0+unknown"


USER_AGENT = f"oktopost-connect/{_package_version()}"


def timeout_from_settings(settings: Settings) -> httpx.Timeout:
    """DEFAULT_TIMEOUT with the read timeout from OKTOPOST_TIMEOUT_SECONDS (connect never above it)."""
    read = settings.oktopost_timeout_seconds
    return httpx.Timeout(
        connect=min(DEFAULT_TIMEOUT.connect or read, read),
        read=read,
        write=DEFAULT_TIMEOUT.write,
        pool=DEFAULT_TIMEOUT.pool,
    )


# ---------------------------------------------------------------------------------------------------
# Answers (the reference's shapes; unknown fields are ignored so an upstream addition breaks nothing)


class _Answer(BaseModel):
    # Upstream names are validation aliases, so code builds and reads these by their snake_case names
    # (and type checkers see those in __init__), while answers validate by Oktopost's spelling.
    # Ids arrive as strings in the reference, but a JSON number must not fail a flow.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True, coerce_numbers_to_str=True)


class Credential(_Answer):
    """A connected profile, page or group. The PUT answer carries only id, name, status and network."""

    id: str = Field(validation_alias="Id", min_length=1)
    name: str = Field(validation_alias="Name")
    status: str = Field(validation_alias="Status")
    network: str = Field(validation_alias="Network")
    created: str | None = Field(default=None, validation_alias="Created")
    image_link: str | None = Field(default=None, validation_alias="ImageLink")
    network_username: str | None = Field(default=None, validation_alias="NetworkUsername")


class Entity(_Answer):
    """A page or group the user may choose to connect."""

    id: str = Field(validation_alias="Id", min_length=1)
    name: str = Field(validation_alias="Name")
    network: str = Field(validation_alias="Network")
    image_link: str | None = Field(default=None, validation_alias="ImageLink")
    network_username: str | None = Field(default=None, validation_alias="NetworkUsername")
    is_connected: bool = Field(default=False, validation_alias="IsConnected")


class VerifiedProfile(_Answer):
    """Verify's answer for a profile: it is connected already."""

    credential: Credential = Field(validation_alias="Credential")


class EntityChoice(_Answer):
    """Verify's answer for pages and groups: the user must pick, then `complete(token, ids)`."""

    token: str = Field(min_length=1, repr=False)
    entities: list[Entity] = Field(validation_alias="data")


class _StartAnswer(_Answer):
    redirect_url: str = Field(validation_alias="RedirectUrl", min_length=1)


class _CredentialAnswer(_Answer):
    credential: Credential = Field(validation_alias="Credential")


class _CompleteAnswer(_Answer):
    credentials: list[Credential] = Field(validation_alias="Credentials")


# ---------------------------------------------------------------------------------------------------
# Classifying an answer: the one place that turns status, Result and Errors into a result or an error

_TOKEN_IN_PATH = re.compile(r"/social-authorization/([^/?#]+)")
_TOKEN_TROUBLE = re.compile(
    r"(?i)\btoken\b.*\b(invalid|expired?|unknown|not found|does not exist|no longer)\b"
    r"|\b(invalid|expired|unknown)\b.*\btoken\b"
)


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
    token_trouble = about_token and any(_TOKEN_TROUBLE.search(message) for message in messages)
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


_A = TypeVar("_A", bound=_Answer)


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
    answer = _shaped(_StartAnswer, read_answer(response), response.status_code)
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


def parse_complete(response: httpx.Response) -> list[Credential]:
    """Step 4: the credentials of the pages/groups just connected."""
    return _shaped(_CompleteAnswer, read_answer(response, about_token=True), response.status_code).credentials


def parse_credential(response: httpx.Response) -> Credential:
    """`GET /v2/credential/{id}`: one credential read back."""
    return _shaped(_CredentialAnswer, read_answer(response), response.status_code).credential


def transport_failure(error: httpx.TransportError) -> UpstreamTransportError:
    """Name what failed, never the URL: httpx messages seldom hold one, and `_URL` masks any that does."""
    kind = "transport error"
    for error_type, name in _TRANSPORT_KINDS:
        if isinstance(error, error_type):
            kind = name
            break
    text = str(error)
    if isinstance(error, httpx.RemoteProtocolError):
        # httpcore: "Server disconnected without sending a response." is the lost answer of CONTRACT 7.
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


# ---------------------------------------------------------------------------------------------------
# Building each call once

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, repr=False)
class OktopostCall(Generic[_T]):
    """One API call, ready to send by either client: what to send and how to read the answer."""

    step: str
    method: str
    path: str  # quoted, may hold the token: never log it unredacted
    parse: Callable[[httpx.Response], _T]
    # Already encoded: Oktopost expects `ids=1,2` with a bare comma, which httpx's params= would escape.
    query: str = ""
    form: Mapping[str, str] | None = field(default=None)

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def __repr__(self) -> str:
        return f"OktopostCall({self.step}: {self.method} {redact(self.path)})"


def _quoted_token(token: str) -> str:
    if not isinstance(token, str) or not token.strip():
        raise ValueError("an okt token is required")
    return quote(token.strip(), safe="")


def start_authorization_request(network: str, callback_url: str, type: str = "profile") -> OktopostCall[str]:
    """Step 1: POST /v2/social-authorization, form-encoded network, url and type."""
    parts = urlsplit(callback_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("the callback url must be an absolute http(s) URL")
    form = {"network": canonical_network(network), "url": callback_url, "type": canonical_entity_type(type)}
    return OktopostCall("start authorization", "POST", AUTHORIZATION_PATH, parse_start, form=form)


def verify_request(token: str) -> OktopostCall[VerifiedProfile | EntityChoice]:
    """Step 3: GET /v2/social-authorization/{token}."""
    return OktopostCall("verify", "GET", f"{AUTHORIZATION_PATH}/{_quoted_token(token)}", parse_verify)


def complete_request(token: str, ids: Sequence[str]) -> OktopostCall[list[Credential]]:
    """Step 4: PUT /v2/social-authorization/{token}?ids=a,b, ids comma-joined as the reference does."""
    if isinstance(ids, str):
        raise ValueError("ids must be a list of ids, not one string")
    cleaned = [str(entity_id).strip() for entity_id in ids]
    if not cleaned or any(not entity_id or "," in entity_id for entity_id in cleaned):
        raise ValueError("ids must be a non-empty list of non-empty ids without commas")
    query = "ids=" + ",".join(quote(entity_id, safe="") for entity_id in cleaned)
    return OktopostCall(
        "complete", "PUT", f"{AUTHORIZATION_PATH}/{_quoted_token(token)}", parse_complete, query=query
    )


def credential_request(credential_id: str) -> OktopostCall[Credential]:
    """GET /v2/credential/{id}."""
    if not isinstance(credential_id, str) or not credential_id.strip():
        raise ValueError("a credential id is required")
    path = f"{CREDENTIAL_PATH}/{quote(credential_id.strip(), safe='')}"
    return OktopostCall("get credential", "GET", path, parse_credential)


# ---------------------------------------------------------------------------------------------------
# Sending: the same calls, sync or async


def _per_request_timeout(timeout: float | None) -> Any:  # httpx.Timeout or httpx.USE_CLIENT_DEFAULT
    """`timeout` replaces every phase's limit for this one request (the retry policy's time left)."""
    if timeout is None:
        return httpx.USE_CLIENT_DEFAULT
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    return httpx.Timeout(timeout)


class _Connection:
    """What both clients share: where, who, how long; and how a call becomes a request and a result."""

    def __init__(
        self,
        base_url: str,
        account_id: str,
        api_key: str | SecretStr,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        if not account_id or not key:
            raise ValueError("an Oktopost account id and API key are required")
        self.base_url = base_url.rstrip("/")
        self.account_id = account_id
        self.timeout = timeout
        self.limits = limits
        self._api_key = SecretStr(key)
        install_log_redaction()
        register_basic_credentials(account_id, key)

    def _http_options(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "auth": httpx.BasicAuth(self.account_id, self._api_key.get_secret_value()),
            "headers": {"User-Agent": USER_AGENT, "Accept": "application/json"},
            "timeout": self.timeout,
            "limits": self.limits,
            # Oktopost answers with JSON, never a redirect; following one would resend the credentials.
            "follow_redirects": False,
        }

    @staticmethod
    def _build(
        http: httpx.Client | httpx.AsyncClient, call: OktopostCall[Any], timeout: float | None
    ) -> httpx.Request:
        return http.build_request(
            call.method, call.target, data=call.form, timeout=_per_request_timeout(timeout)
        )

    @staticmethod
    def _finish(
        call: OktopostCall[_T], response: httpx.Response | None, failure: OktopostError | None, started: float
    ) -> _T:
        elapsed_ms = (time.monotonic() - started) * 1000
        if response is None:
            assert failure is not None
            logger.info("oktopost %s failed after %.0f ms: %s", call.step, elapsed_ms, failure)
            raise failure
        logger.debug("oktopost %s: HTTP %d in %.0f ms", call.step, response.status_code, elapsed_ms)
        return call.parse(response)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, account_id={self.account_id!r})"


def _failure_of(error: httpx.HTTPError) -> OktopostError:
    if isinstance(error, httpx.TransportError):
        return transport_failure(error)
    # DecodingError: a body whose Content-Encoding lies is as good as no answer.
    return MalformedAnswerError(f"Oktopost answer could not be decoded ({type(error).__name__})")


class OktopostClient(_Connection):
    """Blocking client over one pooled `httpx.Client`; safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        account_id: str,
        api_key: str | SecretStr,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, account_id, api_key, timeout=timeout, limits=limits)
        self._http = httpx.Client(transport=transport, **self._http_options())

    @classmethod
    def from_settings(cls, settings: Settings, transport: httpx.BaseTransport | None = None) -> Self:
        return cls(
            settings.oktopost_base_url,
            settings.oktopost_account_id,
            settings.oktopost_api_key,
            timeout=timeout_from_settings(settings),
            transport=transport,
        )

    def send(self, call: OktopostCall[_T], *, timeout: float | None = None) -> _T:
        request = self._build(self._http, call, timeout)
        started = time.monotonic()
        response: httpx.Response | None = None
        failure: OktopostError | None = None
        try:
            response = self._http.send(request)
        except (httpx.TransportError, httpx.DecodingError) as error:
            failure = _failure_of(error)
        return self._finish(call, response, failure, started)

    def start_authorization(
        self, network: str, callback_url: str, type: str = "profile", *, timeout: float | None = None
    ) -> str:
        return self.send(start_authorization_request(network, callback_url, type), timeout=timeout)

    def verify(self, token: str, *, timeout: float | None = None) -> VerifiedProfile | EntityChoice:
        return self.send(verify_request(token), timeout=timeout)

    def complete(self, token: str, ids: Sequence[str], *, timeout: float | None = None) -> list[Credential]:
        return self.send(complete_request(token, ids), timeout=timeout)

    def get_credential(self, credential_id: str, *, timeout: float | None = None) -> Credential:
        return self.send(credential_request(credential_id), timeout=timeout)

    @property
    def is_closed(self) -> bool:
        return self._http.is_closed

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class AsyncOktopostClient(_Connection):
    """Non-blocking client over one pooled `httpx.AsyncClient`; use it from one event loop."""

    def __init__(
        self,
        base_url: str,
        account_id: str,
        api_key: str | SecretStr,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, account_id, api_key, timeout=timeout, limits=limits)
        self._http = httpx.AsyncClient(transport=transport, **self._http_options())

    @classmethod
    def from_settings(cls, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> Self:
        return cls(
            settings.oktopost_base_url,
            settings.oktopost_account_id,
            settings.oktopost_api_key,
            timeout=timeout_from_settings(settings),
            transport=transport,
        )

    async def send(self, call: OktopostCall[_T], *, timeout: float | None = None) -> _T:
        request = self._build(self._http, call, timeout)
        started = time.monotonic()
        response: httpx.Response | None = None
        failure: OktopostError | None = None
        try:
            response = await self._http.send(request)
        except (httpx.TransportError, httpx.DecodingError) as error:
            failure = _failure_of(error)
        return self._finish(call, response, failure, started)

    async def start_authorization(
        self, network: str, callback_url: str, type: str = "profile", *, timeout: float | None = None
    ) -> str:
        return await self.send(start_authorization_request(network, callback_url, type), timeout=timeout)

    async def verify(self, token: str, *, timeout: float | None = None) -> VerifiedProfile | EntityChoice:
        return await self.send(verify_request(token), timeout=timeout)

    async def complete(
        self, token: str, ids: Sequence[str], *, timeout: float | None = None
    ) -> list[Credential]:
        return await self.send(complete_request(token, ids), timeout=timeout)

    async def get_credential(self, credential_id: str, *, timeout: float | None = None) -> Credential:
        return await self.send(credential_request(credential_id), timeout=timeout)

    @property
    def is_closed(self) -> bool:
        return self._http.is_closed

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()


# ---------------------------------------------------------------------------------------------------
# One pooled client per process

_clients_lock = threading.Lock()
# Keyed by pid: a forked child must not share its parent's sockets, so it builds its own.
_sync_clients: dict[int, OktopostClient] = {}
_async_clients: dict[int, AsyncOktopostClient] = {}


def get_client(settings: Settings | None = None) -> OktopostClient:
    """The process's blocking client, built on first use from `settings` (default: the environment)."""
    pid = os.getpid()
    client = _sync_clients.get(pid)
    if client is None or client.is_closed:
        with _clients_lock:
            client = _sync_clients.get(pid)
            if client is None or client.is_closed:
                client = OktopostClient.from_settings(settings or get_settings())
                _sync_clients.clear()
                _sync_clients[pid] = client
    return client


def get_async_client(settings: Settings | None = None) -> AsyncOktopostClient:
    """The process's async client. Its connections belong to the event loop that first used it."""
    pid = os.getpid()
    client = _async_clients.get(pid)
    if client is None or client.is_closed:
        with _clients_lock:
            client = _async_clients.get(pid)
            if client is None or client.is_closed:
                client = AsyncOktopostClient.from_settings(settings or get_settings())
                _async_clients.clear()
                _async_clients[pid] = client
    return client


def reset_clients() -> None:
    """Forget the cached clients (tests, settings changes). The sync one is closed; close the async
    one yourself (`await get_async_client().aclose()`) before, from its event loop, if it was used."""
    with _clients_lock:
        for client in _sync_clients.values():
            client.close()
        _sync_clients.clear()
        _async_clients.clear()
