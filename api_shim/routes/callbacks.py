"""GET /v1/callback/{flow_id}: the browser comes back from Oktopost, with its okt token or without one.

A token claims the flow and queues its verification in one transition; no token means the user did not
authorize, and the flow fails. Either way a hosted flow's browser is given the flow's cookie
(api_shim/browser.py) and sent on to the flow's page, /connect/{flow_id}; a redirect flow's browser goes
straight back to the flow's return_url, or gets a small page. The rules for what a callback comes to are
in api_shim/rules.py.

A flow whose start_url was opened (api_shim/routes/start.py) is claimed or ended by a callback only from
that browser; from any other, the callback is a confirmation page whose form (POST .../confirm, with a
csrf token tied to a cookie of its own) makes the same callback once the user presses it.
"""

from __future__ import annotations

import hmac
import time
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from api_shim import languages, metrics, pages, rules
from api_shim.browser import (
    CONFIRM_COOKIE,
    START_COOKIE,
    BrowserKey,
    confirm_csrf,
    set_callback_cookie,
    started_here,
)
from api_shim.deps import Deps, ShimDeps
from api_shim.errors import ApiError
from api_shim.openapi import errors, html_pages, see_other
from api_shim.rules import Verdict
from api_shim.security import return_url_with
from worker.flows.flow import BrowserUI, Flow, FlowState, is_flow_id, token_fingerprint
from worker.flows.transition import Transition
from worker.observing import tracing

router = APIRouter()

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
    if tokens and not rules.well_formed(tokens[0]):  # bad input is told as such, whatever the flow
        raise ApiError(400, "invalid_callback", "okt is not a well-formed token")
    # the first callback of a process reads the flow first: building its task's message reads the task
    # events' channel off the broker once, which would wait as long as a stalled Redis does
    if len(tokens) == 1 and is_flow_id(flow_id) and shim.enqueuer.prepares_without_redis:
        response = _claim_on_read(shim, flow_id, request, tokens[0])
    else:
        response = _answer(shim, shim.load_flow(flow_id), request, tokens)
    metrics.CALLBACK_SECONDS.observe(time.perf_counter() - started)
    return response


def _answer(shim: Deps, flow: Flow, request: Request, tokens: list[str]) -> Response:
    """The callback on a flow as read: a confirmation page, a claim, or a denial."""
    error = request.query_params.get("error")
    accepted = request.headers.get("accept-language")
    if _needs_confirmation(shim, flow, request, tokens):
        language = languages.choose(flow.locale or None, accepted)
        return _confirmation(shim, flow, tokens[0] if tokens else None, error, language)
    if tokens:
        return _claim(shim, flow, tokens[0], accepted)
    return _deny(shim, flow, error, accepted)


def _claim_on_read(shim: Deps, flow_id: str, request: Request, token: str) -> Response:
    """The usual callback, a well-formed token for a flow awaiting it, in one Redis call: the flow is read
    and claimed together when the rules allow a claim at once (in time, no confirmation needed); when they
    do not, the flow as read is answered as `_answer` answers it."""
    key = BrowserKey.new()
    presented = request.cookies.get(START_COOKIE, "")
    prepared = shim.enqueuer.prepared(flow_id, FlowState.VERIFYING)
    flow, claim = shim.store.claim_on_read(
        flow_id,
        token,
        prepared,
        browser_fp=key.fingerprint,
        start_fp=token_fingerprint(presented) if presented else "",
        tenants_requiring_start=shim.tenants_requiring_start,
    )
    if flow is None:
        raise ApiError(404, "flow_not_found", "no such flow")
    tracing.describe(flow)  # on the request's span, when traces are on
    if claim is None:
        return _answer(shim, flow, request, [token])
    shim.enqueuer.after_transition(claim.done, flow_id, FlowState.VERIFYING, prepared)
    accepted = request.headers.get("accept-language")
    return _claimed(shim, flow, token, claim, key if flow.ui.pages else None, accepted)


@router.post("/v1/callback/{flow_id}/confirm", response_model=None, include_in_schema=False)
async def confirm(flow_id: str, request: Request, shim: ShimDeps) -> Response:
    """The confirmation page's form: the callback it stood for, made now that the user pressed it."""
    flow = await run_in_threadpool(shim.find_flow, flow_id)
    plain = languages.choose(None, request.headers.get("accept-language"))
    if flow is None:
        return pages.not_found_page(shim.settings, plain)
    presented = request.cookies.get(CONFIRM_COOKIE, "")
    if not presented:  # the cookie before the body
        return pages.forbidden_page(shim.settings, plain)
    form = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    csrf = (form.get("csrf") or [""])[0]
    if not hmac.compare_digest(confirm_csrf(presented, flow_id).encode(), csrf.encode()):
        return pages.forbidden_page(shim.settings, plain)
    tokens = form.get("okt") or []
    if len(tokens) > 1:
        raise ApiError(400, "invalid_callback", "more than one okt parameter")
    accepted = request.headers.get("accept-language")
    if tokens:
        return await run_in_threadpool(_claim, shim, flow, tokens[0], accepted)
    errors = form.get("error") or []
    return await run_in_threadpool(_deny, shim, flow, errors[0] if errors else None, accepted)


def _needs_confirmation(shim: Deps, flow: Flow, request: Request, tokens: list[str]) -> bool:
    """A callback that would claim (or end) a flow bound to another browser, or, for a tenant that
    requires it, to no browser at all: the user confirms it first. A repeat, a late or a malformed
    callback is answered as ever."""
    if not rules.awaits_callback(flow) or (tokens and not rules.well_formed(tokens[0])):
        return False
    if rules.came_too_late(flow, shim.store.clock.now()):
        return False
    tenant = shim.settings.tenants.get(flow.tenant)
    required = flow.start_fp or (tenant is not None and tenant.require_start)
    return bool(required) and not started_here(request, flow)


def _confirmation(shim: Deps, flow: Flow, token: str | None, error: str | None, language: str) -> Response:
    metrics.CALLBACKS.labels(outcome="confirmation_asked").inc()
    value = BrowserKey.new().value
    reason = rules.denial_reason(error) if token is None else ""
    page = pages.confirm_page(shim.settings, flow, confirm_csrf(value, flow.flow_id), token, reason, language)
    secure = shim.settings.public_base_url.startswith("https://")
    set_callback_cookie(page, CONFIRM_COOKIE, value, flow.flow_id, secure=secure)
    return page


def _claim(shim: Deps, flow: Flow, token: str, accepted: str | None) -> Response:
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
    return _claimed(shim, flow, token, claim, key, accepted)


def _claimed(
    shim: Deps,
    flow: Flow,
    token: str,
    claim: Transition | None,
    key: BrowserKey | None,
    accepted: str | None,
) -> Response:
    """What a callback with a token comes to, once its claim was made (or, None, could not be tried)."""
    verdict = rules.claim_verdict(flow, token, claim)
    if verdict is Verdict.EXPIRED:
        raise _expired()
    metrics.CALLBACKS.labels(outcome="conflict" if verdict is Verdict.TAKEN else verdict.value).inc()
    if verdict is Verdict.TAKEN:
        raise ApiError(409, "token_already_used", "this token was already used by another flow")
    if verdict is Verdict.CONFLICT:
        raise ApiError(409, "flow_already_claimed", "this flow already received another token")
    return _onwards(shim, flow, "processing", key if claim is not None and claim.done else None, accepted)


def _deny(shim: Deps, flow: Flow, error: str | None, accepted: str | None) -> Response:
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
        return _onwards(shim, flow, "denied", key if denial is not None and denial.done else None, accepted)
    raise ApiError(409, "flow_already_claimed", "this flow already received a token")


def _browser_key(flow: Flow) -> BrowserKey | None:
    return BrowserKey.new() if flow.ui.pages else None


def _onwards(shim: Deps, flow: Flow, status: str, key: BrowserKey | None, accepted: str | None) -> Response:
    """Where the browser goes next. A hosted flow's browser is sent to the flow's page; it gets the cookie
    only from the callback whose transition kept its hash, so a repeat changes nothing for anybody."""
    if flow.ui is BrowserUI.REDIRECT:
        return back_to_caller(shim, flow, status, accepted)
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


def back_to_caller(shim: Deps, flow: Flow, status: str, accepted: str | None) -> Response:
    """A 303 to the flow's own return_url with flow_id and status added; without one, a small page in the
    flow's language (its locale, else the browser's `accepted` languages) saying the window can close."""
    if flow.return_url:
        return RedirectResponse(
            return_url_with(flow.return_url, flow.flow_id, status, flow.caller_state), status_code=303
        )
    language = languages.choose(flow.locale or None, accepted)
    return pages.status_page(shim.settings, flow, denied=status == "denied", language=language)
