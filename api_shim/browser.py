"""What binds a hosted flow to the browser that came back, and the headers every browser answer carries.

The callback gives that browser a random cookie scoped to the flow's page (`/connect/{flow_id}`) and the
flow keeps only the cookie's hash, written in the same transition that claims (or denies) the flow. A
repeated callback changes nothing: the first browser keeps its cookie and no other gets one, so a leaked
flow id, or even the callback's URL, shows nobody else the page. The selection form's csrf token is an
HMAC of the cookie: only the page that browser was shown can have it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.flows.flow import Flow, same_fingerprint, token_fingerprint

COOKIE = "okc_browser"
START_COOKIE = "okc_start"  # given by /v1/start/{flow_id}, sent back with the flow's callback only
CONFIRM_COOKIE = "okc_confirm"  # given with a callback's confirmation page, for its form's csrf
BROWSER_PATHS = ("/v1/callback/", "/v1/start/", "/connect/")

BROWSER_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def html_policy(*form_targets: str) -> str:
    """The content security policy of an HTML answer; `form_targets`: origins besides the shim's own
    that a form on the page may lead to (browsers hold a form's redirects to form-action too)."""
    targets = " ".join(("'self'", *form_targets))
    return (
        f"default-src 'self'; base-uri 'none'; form-action {targets}; object-src 'none'; "
        "frame-ancestors 'none'"
    )


HTML_POLICY = html_policy()


@dataclass(frozen=True, slots=True)
class BrowserKey:
    """The cookie a browser is given for one flow; the flow keeps `fingerprint` only."""

    value: str

    @classmethod
    def new(cls) -> BrowserKey:
        return cls(secrets.token_urlsafe(32))

    @property
    def fingerprint(self) -> str:
        return token_fingerprint(self.value)  # the one-way hash the flow keeps of its okt token too

    def set_on(self, response: Response, flow_id: str, *, secure: bool) -> None:
        response.set_cookie(
            COOKIE,
            self.value,
            path=f"/connect/{flow_id}",
            httponly=True,
            samesite="lax",
            secure=secure,
        )


def browser_key(request: Request, flow: Flow) -> BrowserKey | None:
    """The cookie of the browser the flow is bound to, when this request carries it; None otherwise."""
    presented = request.cookies.get(COOKIE, "")
    if not presented or not flow.browser_fp:
        return None
    if not same_fingerprint(flow.browser_fp, presented):
        return None
    return BrowserKey(presented)


def set_callback_cookie(response: Response, name: str, value: str, flow_id: str, *, secure: bool) -> None:
    """A cookie sent back only to the flow's callback and its confirmation (SameSite=Lax: Oktopost's
    redirect to the callback is a top-level navigation, which carries it)."""
    path = f"/v1/callback/{flow_id}"
    response.set_cookie(name, value, path=path, httponly=True, samesite="lax", secure=secure)


def started_here(request: Request, flow: Flow) -> bool:
    """Whether this request comes from the browser that opened the flow's start_url."""
    presented = request.cookies.get(START_COOKIE, "")
    return bool(presented and flow.start_fp and same_fingerprint(flow.start_fp, presented))


def confirm_csrf(value: str, flow_id: str) -> str:
    return hmac.new(value.encode(), f"confirm:{flow_id}".encode(), hashlib.sha256).hexdigest()


def csrf_token(key: BrowserKey, flow_id: str) -> str:
    return hmac.new(key.value.encode(), f"csrf:{flow_id}".encode(), hashlib.sha256).hexdigest()


def csrf_matches(key: BrowserKey, flow_id: str, presented: str) -> bool:
    return hmac.compare_digest(csrf_token(key, flow_id).encode(), presented.encode())


class BrowserHeaders:
    """ASGI middleware: the headers above on every answer to a browser route and on every HTML answer,
    with the content security policy on HTML. Outermost, so refusals and redirects carry them too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        browser_route = str(scope["path"]).startswith(BROWSER_PATHS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                html = headers.get("content-type", "").startswith("text/html")
                if browser_route or html:
                    for name, value in BROWSER_HEADERS.items():
                        headers[name] = value
                if html and "content-security-policy" not in headers:  # a page may widen its form-action
                    headers["Content-Security-Policy"] = HTML_POLICY
            await send(message)

        await self.app(scope, receive, send_with_headers)
