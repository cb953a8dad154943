"""GET /v1/start/{flow_id}: where a partner sends the user's browser to begin a flow.

It binds the flow to this browser (a random cookie, sent back only with the flow's callback; the flow
keeps its hash) and sends it on to Oktopost's consent page. A callback from another browser then does
not claim the flow by itself: it gets a confirmation page (api_shim/routes/callbacks.py), so a consent
link sent to someone else cannot connect their account into the sender's flow, nor theirs into it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from api_shim import languages, pages
from api_shim.browser import START_COOKIE, BrowserKey, set_callback_cookie
from api_shim.deps import ShimDeps
from api_shim.openapi import html_pages, see_other
from worker.flows.store import StartBinding

router = APIRouter()


@router.get(
    "/v1/start/{flow_id}",
    response_model=None,
    response_class=Response,
    responses={
        **see_other("on to Oktopost's consent page, the flow bound to this browser"),
        **html_pages(404),
    },
)
async def start(flow_id: str, request: Request, shim: ShimDeps) -> Response:
    flow = await run_in_threadpool(shim.find_flow, flow_id)
    if flow is None or not flow.redirect_url:
        return pages.not_found_page(
            shim.settings, languages.choose(None, request.headers.get("accept-language"))
        )
    response = RedirectResponse(flow.redirect_url, status_code=303)
    key = BrowserKey.new()
    # a browser bound before keeps its cookie; this one goes on without one (its callback is confirmed)
    if await run_in_threadpool(shim.store.bind_start, flow_id, key.fingerprint) is StartBinding.BOUND:
        secure = shim.settings.public_base_url.startswith("https://")
        set_callback_cookie(response, START_COOKIE, key.value, flow_id, secure=secure)
    return response
