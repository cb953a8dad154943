"""The sandbox assembled: routes each request to the API, the consent page or the controls.

A `/v2/` call passes, in order: latency, Basic auth (401), an account-wide injected 429 still in force,
the account's daily cap and burst limit (429), the fault dice, and only then the endpoint. Faults other
than `drop` answer instead of the endpoint, so no work is done; `drop` lets the endpoint do its work and
then loses the answer. Every refusal is shaped
as the `error_shape` fault says.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field

from sandbox.accounts import AccountKey, Accounts, ServedAccount
from sandbox.api import UNAUTHORIZED, OktopostApi, public_base_url
from sandbox.authorizations import Account, Clock
from sandbox.consent import ConsentPage
from sandbox.control import ControlPanel
from sandbox.faults import FaultConfig, Faults
from sandbox.httpserver import Answer, Request, Response, Silence, html_response
from sandbox.ratelimit import DailyLimit, Rate, SlidingWindowLimiter
from sandbox.refusals import Refusal
from sandbox.stats import Stats

DEFAULT_ACCOUNT_ID = "demo-account"
DEFAULT_API_KEY = "demo-key"

# What a broken upstream might send with a 200: an error page from some proxy, not JSON.
MALFORMED_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything the sandbox is started with; `faults` is also what a reset returns to."""

    account_id: str = DEFAULT_ACCOUNT_ID
    api_key: str = DEFAULT_API_KEY
    other_accounts: tuple[AccountKey, ...] = ()  # served beside the first, each with its own limits
    token_ttl_s: float = 300.0
    rate: Rate | None = None
    block_s: float = 900.0
    daily_limit: int | None = None  # calls a day (UTC) per account
    faults: FaultConfig = field(default_factory=FaultConfig)
    public_url: str | None = None  # base of RedirectUrl; by default the Host the request came in on
    access_log: bool = False


class Sandbox:
    """Sandboxed Oktopost accounts behind one HTTP handler (`handle`)."""

    def __init__(
        self, config: SandboxConfig, clock: Clock = time.monotonic, wall_clock: Clock = time.time
    ) -> None:
        self.config = config
        self.faults = Faults(config.faults)
        self._clock = clock
        self._wall_clock = wall_clock
        keys = (AccountKey(config.account_id, config.api_key), *config.other_accounts)
        self.accounts = Accounts(keys, self._open_account)
        self.stats = Stats([account.id for account in self.accounts])
        self.fallback_base_url = "http://127.0.0.1"  # replaced by the bound address once listening
        self._api = OktopostApi(self._base_url)
        self._consent = ConsentPage(self.accounts)
        self._control = ControlPanel(self.accounts, self.faults, self.stats, self.reset)

    def _open_account(self, account_id: str) -> ServedAccount:
        config = self.config
        return ServedAccount(
            account_id,
            Account(config.token_ttl_s, self._clock, self._wall_clock, self.faults.credential_status),
            SlidingWindowLimiter(config.rate, config.block_s, self._clock) if config.rate else None,
            DailyLimit(config.daily_limit, self._wall_clock) if config.daily_limit else None,
        )

    def reset(self) -> None:
        self.accounts.reset()
        self.faults.reset()
        self.stats.reset()

    async def handle(self, request: Request) -> Answer:
        started = time.perf_counter()
        path = request.path
        answer: Answer
        if path == "/v2" or path.startswith("/v2/"):
            answer = await self._call_api(request)
        elif path == "/oauth/authorize":
            answer = self._consent.answer(request)
        elif path.startswith("/_sandbox/"):
            answer = self._control.answer(request)
        else:
            answer = self._shaped(Refusal(404, f"Unknown route {path}"))
        if self.config.access_log:
            _log_access(request, answer, time.perf_counter() - started)
        return answer

    async def _call_api(self, request: Request) -> Answer:
        self.stats.v2_calls += 1
        latency_ms = self.faults.config.latency_ms
        if latency_ms > 0:
            await asyncio.sleep(latency_ms / 1000)
        account = self.accounts.authenticate(request)
        answer = self._admit_and_answer(request, account)
        if isinstance(answer, Refusal):
            answer = self._shaped(answer)
        if isinstance(answer, Response):
            self.stats.answered(account.id if account else None, answer.status)
        return answer

    def _admit_and_answer(self, request: Request, account: ServedAccount | None) -> Answer | Refusal:
        if account is None:
            return UNAUTHORIZED
        throttled_for = account.throttled_until - self._clock()
        if throttled_for > 0:
            # A call the injected throttle refuses takes no place in the burst window or the daily count.
            self.stats.throttled_by_fault += 1
            return self._too_many_requests("Rate limit exceeded", throttled_for)
        limited = self._limited(account)
        if limited is not None:
            return limited
        fault = self.faults.roll()
        if fault is not None:
            self.stats.faults[fault] += 1
        if fault == "error":
            return Refusal(503, "Service temporarily unavailable")
        if fault == "throttle":
            return self._throttled(account)
        if fault == "timeout":
            return Silence.HANG
        if fault == "malformed":
            return html_response(200, MALFORMED_PAGE)
        if fault == "reject":
            # Oktopost refuses with HTTP 200 too: a 200 is not success until Result
            return Refusal(200, "The request was rejected")
        answer = self._api.answer(request, account.authorizations)
        return Silence.DROP if fault == "drop" else answer

    def _limited(self, account: ServedAccount) -> Refusal | None:
        """The 429 of the account's daily cap or burst limit; None when the call counts and goes on."""
        # The daily cap is looked at first, so a call it refuses takes no place in the burst window.
        if account.daily is not None:
            verdict = account.daily.check()
            if not verdict.allowed:
                self.stats.throttled_by_daily_limit += 1
                return self._too_many_requests("Daily rate limit exceeded", verdict.retry_after_s)
        if account.limiter is not None:
            verdict = account.limiter.check()
            if not verdict.allowed:
                self.stats.throttled_by_rate_limit += 1
                self.stats.blocked_count += verdict.blocked_now
                return self._too_many_requests("Rate limit exceeded", verdict.retry_after_s)
        if account.daily is not None:
            account.daily.count()
        return None

    def _throttled(self, account: ServedAccount) -> Refusal:
        """An injected 429; with `throttle_scope` "account" the whole account answers 429 until it passes."""
        self.stats.throttled_by_fault += 1
        retry_after_s = self.faults.config.retry_after_s or 0
        if self.faults.config.throttle_scope == "account":
            account.throttled_until = self._clock() + retry_after_s
        return self._too_many_requests("Rate limit exceeded", retry_after_s)

    def _too_many_requests(self, message: str, retry_after_s: float) -> Refusal:
        return Refusal(429, message, headers=self.faults.retry_after_headers(retry_after_s))

    def _shaped(self, refusal: Refusal) -> Response:
        return refusal.response(self.faults.config.error_shape)

    def _base_url(self, request: Request) -> str:
        if self.config.public_url:
            return self.config.public_url
        return public_base_url(request, self.fallback_base_url)


def _log_access(request: Request, answer: Answer, seconds: float) -> None:
    # Tokens travel in /v2/social-authorization/{token}: never log that segment, nor any query string.
    path = ascii(request.path)[1:-1]  # escaped, so a %0A in a path cannot forge a log line
    if path.startswith("/v2/social-authorization/"):
        path = "/v2/social-authorization/***"
    outcome = answer.value if isinstance(answer, Silence) else str(answer.status)
    print(f"{request.method} {path} {outcome} {seconds * 1000:.1f}ms", file=sys.stderr, flush=True)
