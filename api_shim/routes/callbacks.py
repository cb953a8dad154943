"""GET /v1/callback/{flow_id}: the browser comes back from Oktopost, with its okt token or without one.

A token claims the flow and queues its verification in one transition; no token means the user did not
authorize, and the flow fails. Either way a hosted flow's browser is given the flow's cookie
(api_shim/browser.py) and sent on to the flow's page, /connect/{flow_id}; a redirect flow's browser goes
straight back to the flow's return_url, or gets a small page. The rules for what a callback comes to are
in api_shim/rules.py.
"""

from __future__ import annotations

import time
from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api_shim import metrics, rules
from api_shim.browser import BrowserKey
from api_shim.deps import Deps, ShimDeps
from api_shim.errors import ApiError
from api_shim.openapi import errors, html_pages, see_other
from api_shim.rules import Verdict
from api_shim.security import return_url_with
from worker.flows.flow import BrowserUI, Flow, FlowState

router = APIRouter()

_PAGES = {
    "processing": "Thanks! Your account is being connected. You can close this window.",
    "denied": "The authorization was not granted. You can close this window.",
}


_QUERY = [
    {
        "name": "okt",
        "in": "query",
        "description": "Oktopost's token; absent when the user did not authorize",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._~-]{8,256}$"},
    },
    {
        "name": "error",
        "in": "query",
        "description": "why the user did not authorize",
        "schema": {"type": "string"},
    },
]


@router.get(
    "/v1/callback/{flow_id}",
    response_model=None,
    response_class=Response,
    responses={
        **see_other("a hosted flow: to its page, /connect/{flow_id}; a redirect flow: to its return_url"),
        **html_pages(
            200,
            meanings={200: "a redirect flow without return_url: a small page saying the window can close"},
        ),
        **errors(
            400,
            404,
            409,
            410,
            meanings={
                400: "okt given twice, or not a well-formed token",
                409: "the flow already received another token, or the token was used by another flow",
            },
        ),
    },
    openapi_extra={"parameters": _QUERY},
)
def callback(flow_id: str, request: Request, shim: ShimDeps) -> Response:
    started = time.perf_counter()
    tokens = request.query_params.getlist("okt")
    if len(tokens) > 1:
        raise ApiError(400, "invalid_callback", "more than one okt parameter")
    flow = shim.load_flow(flow_id)
    if tokens:
        response = _claim(shim, flow, tokens[0])
    else:
        response = _deny(shim, flow, request.query_params.get("error"))
    metrics.CALLBACK_SECONDS.observe(time.perf_counter() - started)
    return response


def _claim(shim: Deps, flow: Flow, token: str) -> Response:
    if not rules.well_formed(token):
        raise ApiError(400, "invalid_callback", "okt is not a well-formed token")
    _expire_if_too_late(shim, flow)
    claim = None
    key = _browser_key(flow)
    if rules.awaits_callback(flow):
        prepared = shim.enqueuer.prepared(flow.flow_id, FlowState.VERIFYING)
        fingerprint = key.fingerprint if key else ""
        claim = shim.store.claim_callback(flow, token, queue=prepared, browser_fp=fingerprint)
        shim.enqueuer.after_transition(claim.done, flow.flow_id, FlowState.VERIFYING, prepared)
    verdict = rules.claim_verdict(flow, token, claim)
    if verdict is Verdict.EXPIRED:
        raise _expired()
    metrics.CALLBACKS.labels(outcome="conflict" if verdict is Verdict.TAKEN else verdict.value).inc()
    if verdict is Verdict.TAKEN:
        raise ApiError(409, "token_already_used", "this token was already used by another flow")
    if verdict is Verdict.CONFLICT:
        raise ApiError(409, "flow_already_claimed", "this flow already received another token")
    return _onwards(shim, flow, "processing", key if claim is not None and claim.done else None)


def _deny(shim: Deps, flow: Flow, error: str | None) -> Response:
    _expire_if_too_late(shim, flow)
    denial = None
    key = _browser_key(flow)
    if rules.awaits_callback(flow):
        # only from awaiting_callback, and its own result decides: a callback with a token that got
        # there first wins, and this one is told so
        fingerprint = key.fingerprint if key else ""
        denial = shim.store.deny(flow, rules.denial_message(error), browser_fp=fingerprint)
        if denial.done:
            metrics.CALLBACKS.labels(outcome=Verdict.DENIED.value).inc()
    verdict = rules.denial_verdict(denial, flow)
    if verdict is Verdict.EXPIRED:
        raise _expired()
    if verdict is Verdict.DENIED:
        return _onwards(shim, flow, "denied", key if denial is not None and denial.done else None)
    raise ApiError(409, "flow_already_claimed", "this flow already received a token")


def _browser_key(flow: Flow) -> BrowserKey | None:
    return BrowserKey.new() if flow.ui.pages else None


def _onwards(shim: Deps, flow: Flow, status: str, key: BrowserKey | None) -> Response:
    """Where the browser goes next. A hosted flow's browser is sent to the flow's page; it gets the cookie
    only from the callback whose transition kept its hash, so a repeat changes nothing for anybody."""
    if flow.ui is BrowserUI.REDIRECT:
        return back_to_caller(flow, status)
    base = shim.settings.public_base_url
    response = RedirectResponse(f"{base}/connect/{flow.flow_id}", status_code=303)
    if key is not None:
        key.set_on(response, flow.flow_id, secure=base.startswith("https://"))
    return response


def _expire_if_too_late(shim: Deps, flow: Flow) -> None:
    """A callback after the flow's deadline ends it (the sweeper may not have got to it yet): 410."""
    if rules.came_too_late(flow, shim.store.clock.now()):
        shim.store.expire(flow)
        raise _expired()


def _expired() -> ApiError:
    return ApiError(410, "flow_expired", "the flow has expired")


def back_to_caller(flow: Flow, status: str) -> Response:
    """A 303 to the flow's own return_url with flow_id and status added; a small page when it has none."""
    if flow.return_url:
        return RedirectResponse(return_url_with(flow.return_url, flow.flow_id, status), status_code=303)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>oktopost-connect</title></head>"
        f"<body><p>{escape(_PAGES[status])}</p><p>Reference: <code>{escape(flow.flow_id)}</code></p>"
        "</body></html>"
    )
    return HTMLResponse(page, status_code=200)
