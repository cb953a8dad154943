"""The sandbox assembled: routes each request to the API, the consent page or the controls.

A `/v2/` call passes, in order: latency, Basic auth (401), the burst limit (429), the fault dice, and
only then the endpoint. Faults other than `drop` answer instead of the endpoint, so no work is done;
`drop` lets the endpoint do its work and then loses the answer.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field

from sandbox.api import BasicAuth, OktopostApi, api_error, public_base_url, unauthorized
from sandbox.authorizations import Account, Clock
from sandbox.consent import ConsentPage
from sandbox.control import ControlPanel
from sandbox.faults import FaultConfig, Faults
from sandbox.httpserver import Answer, Request, Response, Silence, html_response
from sandbox.ratelimit import Rate, SlidingWindowLimiter
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
    token_ttl_s: float = 300.0
    rate: Rate | None = None
    block_s: float = 900.0
    faults: FaultConfig = field(default_factory=FaultConfig)
    public_url: str | None = None  # base of RedirectUrl; by default the Host the request came in on
    access_log: bool = False


class Sandbox:
    """One sandboxed Oktopost account behind one HTTP handler (`handle`)."""

    def __init__(self, config: SandboxConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.account = Account(config.token_ttl_s, clock)
        self.faults = Faults(config.faults)
        self.limiter = SlidingWindowLimiter(config.rate, config.block_s, clock) if config.rate else None
        self.stats = Stats()
        self.fallback_base_url = "http://127.0.0.1"  # replaced by the bound address once listening
        self._auth = BasicAuth(config.account_id, config.api_key)
        self._api = OktopostApi(self.account, self._base_url)
        self._consent = ConsentPage(self.account, config.account_id)
        self._control = ControlPanel(self.account, self.faults, self.stats, self.reset)

    def reset(self) -> None:
        self.account.reset()
        self.faults.reset()
        if self.limiter is not None:
            self.limiter.reset()
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
            answer = api_error(404, f"Unknown route {path}")
        if self.config.access_log:
            _log_access(request, answer, time.perf_counter() - started)
        return answer

    async def _call_api(self, request: Request) -> Answer:
        stats = self.stats
        stats.v2_calls += 1
        latency_ms = self.faults.config.latency_ms
        if latency_ms > 0:
            await asyncio.sleep(latency_ms / 1000)
        answer = self._admit_and_answer(request)
        if isinstance(answer, Response):
            stats.statuses[answer.status] += 1
        return answer

    def _admit_and_answer(self, request: Request) -> Answer:
        stats = self.stats
        if not self._auth.accepts(request):
            return unauthorized()
        if self.limiter is not None:
            verdict = self.limiter.check()
            if not verdict.allowed:
                stats.throttled_by_rate_limit += 1
                stats.blocked_count += verdict.blocked_now
                return self._too_many_requests(verdict.retry_after_s)
        fault = self.faults.roll()
        if fault is not None:
            stats.faults[fault] += 1
        if fault == "error":
            return api_error(503, "Service temporarily unavailable")
        if fault == "throttle":
            stats.throttled_by_fault += 1
            return self._too_many_requests(self.faults.config.retry_after_s)
        if fault == "timeout":
            return Silence.HANG
        if fault == "malformed":
            return html_response(200, MALFORMED_PAGE)
        if fault == "reject":
            # Oktopost refuses with HTTP 200 too: a 200 is not success until Result
            return api_error(200, "The request was rejected")
        answer = self._api.answer(request)
        return Silence.DROP if fault == "drop" else answer

    def _too_many_requests(self, retry_after_s: float) -> Response:
        return api_error(
            429, "Rate limit exceeded", [("retry-after", self.faults.retry_after(retry_after_s))]
        )

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
