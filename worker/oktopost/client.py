"""The two clients, sync (the Celery worker's threads) and async (the shim), sending the same calls."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from pydantic import SecretStr

from worker.config.settings import Settings
from worker.observing import tracing
from worker.observing.redaction import install_log_redaction, register_basic_credentials
from worker.oktopost.answers import Credential, CredentialPage, EntityChoice, VerifiedProfile
from worker.oktopost.calls import (
    OktopostCall,
    complete_request,
    credential_request,
    delete_credential_request,
    list_credentials_request,
    start_authorization_request,
    verify_request,
)
from worker.oktopost.deadline import bound_attempts, end_attempt, start_attempt
from worker.oktopost.errors import MalformedAnswerError, OktopostError, UpstreamTransportError
from worker.oktopost.reading import transport_failure

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

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


def _per_request_timeout(timeout: float | None) -> Any:  # httpx.Timeout or httpx.USE_CLIENT_DEFAULT
    """`timeout` replaces every phase's limit for this one request (the retry policy's time left); the
    attempt as a whole is bounded by the same `timeout` (see `_Connection._attempt_seconds`)."""
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

    def _attempt_seconds(self, timeout: float | None) -> float | None:
        """How long one attempt may take in all, from its request to its last byte: `timeout`, or without
        one the read timeout (OKTOPOST_TIMEOUT_SECONDS), the longest the retry policy ever gives."""
        return self.timeout.read if timeout is None else timeout

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
        if transport is None and not bound_attempts(self._http):
            logger.warning(
                "httpx %s keeps its connection pool out of reach: an attempt's timeout bounds each read"
                " and write, not the whole call",
                httpx.__version__,
            )

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
        attempt = start_attempt(self._attempt_seconds(timeout))
        span = tracing.call_started(call.step, call.method, self.base_url, call.path)
        try:
            response = self._http.send(request)
        except (httpx.TransportError, httpx.DecodingError) as error:
            failure = _failure_of(error)
        finally:
            end_attempt(attempt)
            tracing.call_ended(span, None if response is None else response.status_code, failure)
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

    def list_credentials(
        self, page: int = 0, count: int = 100, *, include_invalid: bool = True, timeout: float | None = None
    ) -> CredentialPage:
        call = list_credentials_request(page, count, include_invalid=include_invalid)
        return self.send(call, timeout=timeout)

    def delete_credential(self, credential_id: str, *, timeout: float | None = None) -> bool:
        return self.send(delete_credential_request(credential_id), timeout=timeout)

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
        seconds = self._attempt_seconds(timeout)
        span = tracing.call_started(call.step, call.method, self.base_url, call.path)
        try:
            # Cancelling the request at the deadline is safe here: httpcore closes the connection it
            # interrupts instead of returning it to the pool.
            async with asyncio.timeout(seconds):
                response = await self._http.send(request)
        except (httpx.TransportError, httpx.DecodingError) as error:
            failure = _failure_of(error)
        except TimeoutError:
            failure = UpstreamTransportError("timeout", f"no complete answer within {seconds:g} s")
        finally:
            tracing.call_ended(span, None if response is None else response.status_code, failure)
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

    async def list_credentials(
        self, page: int = 0, count: int = 100, *, include_invalid: bool = True, timeout: float | None = None
    ) -> CredentialPage:
        call = list_credentials_request(page, count, include_invalid=include_invalid)
        return await self.send(call, timeout=timeout)

    async def delete_credential(self, credential_id: str, *, timeout: float | None = None) -> bool:
        return await self.send(delete_credential_request(credential_id), timeout=timeout)

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
