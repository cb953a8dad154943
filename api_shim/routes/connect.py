"""The hosted connect journey, for the browser a hosted flow's callback sent here (and gave its cookie):
the flow's page, its event stream, and the selection form's submission.

Only that browser gets in: without the flow's cookie the page is a 403 that tells nothing about the flow,
and a selection also needs the form's csrf token. A selection is submitted by the same rule as the caller's
route (api_shim/rules.py): whichever comes first wins, the other gets 409.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from api_shim import pages, rules
from api_shim.browser import BrowserKey, browser_key, csrf_matches, csrf_token
from api_shim.deps import Deps, ShimDeps
from api_shim.errors import ApiError
from api_shim.openapi import errors, html_pages, see_other, server_sent_events
from api_shim.rules import SelectionOutcome
from worker.flows.flow import Flow

router = APIRouter(default_response_class=Response)

_REFUSALS = {
    SelectionOutcome.WRONG_STATE: (409, "Your selection was not taken: the connection had already moved on."),
    SelectionOutcome.FLOW_EXPIRED: (410, "Your selection was not taken: time ran out."),
    SelectionOutcome.TOKEN_EXPIRED: (410, "Your selection was not taken: the authorization ran out."),
}


@router.get(
    "/connect/{flow_id}",
    response_model=None,
    responses=html_pages(
        200,
        403,
        404,
        meanings={200: "the flow's page", 403: "not this browser's flow: a page that tells nothing of it"},
    ),
)
def flow_page(flow_id: str, request: Request, shim: ShimDeps) -> Response:
    flow = shim.find_flow(flow_id)
    if flow is None:
        return pages.not_found_page(shim.settings)
    key = browser_key(request, flow)
    if key is None:
        return pages.forbidden_page(shim.settings)
    return _page(shim, flow, key)


@router.get(
    "/connect/{flow_id}/events",
    response_model=None,
    responses={**server_sent_events("the flow's events, until its terminal one"), **errors(403, 404, 429)},
)
async def flow_events(flow_id: str, request: Request, shim: ShimDeps) -> Response:
    flow = await run_in_threadpool(shim.load_flow, flow_id)
    key = browser_key(request, flow)
    if key is None:
        raise ApiError(403, "forbidden", "this flow belongs to another browser")
    return await shim.streams.open(flow_id, key.fingerprint[:32], request)


_SELECTION_FORM = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "properties": {
                    "ids": {"type": "array", "items": {"type": "string"}},
                    "csrf": {"type": "string", "description": "the page's csrf field"},
                },
                "required": ["csrf"],
            }
        }
    },
}


@router.post(
    "/connect/{flow_id}/selection",
    response_model=None,
    status_code=303,  # in the description only: every answer is made below
    responses={
        **see_other("taken: back to the flow's page"),
        **html_pages(
            403,
            404,
            409,
            410,
            422,
            meanings={
                409: "the page, with word that the flow had already moved on",
                410: "the page, with word that time ran out",
                422: "the form again: nothing chosen, or something not offered",
            },
        ),
    },
    openapi_extra={"requestBody": _SELECTION_FORM},
)
async def submit_selection(flow_id: str, request: Request, shim: ShimDeps) -> Response:
    # the cookie before the body: a browser without it gets its answer before it has sent a byte more
    flow = await run_in_threadpool(shim.find_flow, flow_id)
    if flow is None:
        return pages.not_found_page(shim.settings)
    key = browser_key(request, flow)
    if key is None:
        return pages.forbidden_page(shim.settings)
    form = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    return await run_in_threadpool(_select, shim, flow, key, form)


def _select(shim: Deps, flow: Flow, key: BrowserKey, form: dict[str, list[str]]) -> Response:
    flow_id = flow.flow_id
    if not csrf_matches(key, flow_id, (form.get("csrf") or [""])[0]):
        return pages.forbidden_page(shim.settings)
    ids = [entity_id for entity_id in form.get("ids", []) if entity_id]
    selection = rules.submit_selection(shim.store, shim.enqueuer, flow, ids)
    if selection.queued:
        return RedirectResponse(f"{shim.settings.public_base_url}/connect/{flow_id}", status_code=303)
    if selection.outcome in _REFUSALS:
        status_code, notice = _REFUSALS[selection.outcome]
        return _page(shim, selection.flow, key, status_code=status_code, notice=notice)
    if selection.outcome is SelectionOutcome.NOTHING_SELECTED:
        message = f"Choose at least one {flow.entity_type} to connect."
    else:
        message = f"Choose among the {flow.entity_type}s listed here."
    csrf = csrf_token(key, flow_id)
    return pages.selection_page(shim.settings, flow, csrf, status_code=422, message=message)


def _page(
    shim: Deps, flow: Flow, key: BrowserKey, *, status_code: int = 200, notice: str | None = None
) -> Response:
    events = shim.store.events(flow.flow_id) if flow.state.terminal else []
    csrf = csrf_token(key, flow.flow_id)
    return pages.flow_page(shim.settings, flow, events, csrf, status_code=status_code, notice=notice)
