"""Every answer a browser gets, and every HTML answer, is not cached, sends no referrer, is not
sniffed; HTML also carries a content security policy that loads nothing from elsewhere and no framing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.support.browsers import came_back, csrf_of, page
from tests.support.shim import CALLER, OFFERS, TOKEN, Shim, new_flow_id
from worker.flows.flow import BrowserUI

pytestmark = pytest.mark.anyio

Visit = Callable[[Shim], Awaitable[httpx.Response]]
FORM = {"content-type": "application/x-www-form-urlencoded"}


async def _hosted_callback(shim: Shim) -> httpx.Response:
    return await came_back(shim, shim.new_flow())


async def _redirect_callback(shim: Shim) -> httpx.Response:
    return await came_back(shim, shim.new_flow(ui=BrowserUI.REDIRECT))


async def _redirect_callback_page(shim: Shim) -> httpx.Response:
    return await came_back(shim, shim.new_flow(return_url=None, ui=BrowserUI.REDIRECT))


async def _denied_callback(shim: Shim) -> httpx.Response:
    return await shim.http.get(f"/v1/callback/{shim.new_flow().flow_id}", params={"error": "access_denied"})


async def _malformed_callback(shim: Shim) -> httpx.Response:
    return await shim.http.get(f"/v1/callback/{shim.new_flow().flow_id}", params={"okt": "bad"})


async def _unknown_callback(shim: Shim) -> httpx.Response:
    return await shim.http.get(f"/v1/callback/{new_flow_id()}", params={"okt": TOKEN})


async def _oversized_callback(shim: Shim) -> httpx.Response:
    return await shim.http.get(f"/v1/callback/{new_flow_id()}", params={"okt": "x" * 5000})


async def _page(shim: Shim) -> httpx.Response:
    flow = shim.new_flow()
    await came_back(shim, flow)
    return await page(shim, flow)


async def _forbidden_page(shim: Shim) -> httpx.Response:
    return await shim.http.get(f"/connect/{shim.new_flow().flow_id}")


async def _unknown_page(shim: Shim) -> httpx.Response:
    return await shim.http.get(f"/connect/{new_flow_id()}")


async def _selection(shim: Shim, ids: list[str]) -> httpx.Response:
    flow = shim.new_flow()
    await came_back(shim, flow)
    shim.offer(shim.flow(flow.flow_id), OFFERS)
    csrf = csrf_of((await page(shim, flow)).text)
    body = "&".join([f"ids={entity_id}" for entity_id in ids] + [f"csrf={csrf}"])
    return await shim.http.post(f"/connect/{flow.flow_id}/selection", content=body, headers=FORM)


async def _selection_accepted(shim: Shim) -> httpx.Response:
    return await _selection(shim, [OFFERS[0].id])


async def _selection_empty(shim: Shim) -> httpx.Response:
    return await _selection(shim, [])


async def _page_events(shim: Shim) -> httpx.Response:
    flow = shim.new_flow()
    await came_back(shim, flow)
    assert shim.store.give_up(shim.flow(flow.flow_id), owner="").done
    return await shim.http.get(f"/connect/{flow.flow_id}/events")


async def _stylesheet(shim: Shim) -> httpx.Response:
    return await shim.http.get("/connect/static/connect.css")


BROWSER_ANSWERS: dict[str, tuple[Visit, int]] = {
    "hosted callback": (_hosted_callback, 303),
    "redirect callback": (_redirect_callback, 303),
    "redirect callback without return_url": (_redirect_callback_page, 200),
    "denied callback": (_denied_callback, 303),
    "malformed callback": (_malformed_callback, 400),
    "unknown flow's callback": (_unknown_callback, 404),
    "oversized callback": (_oversized_callback, 414),
    "page": (_page, 200),
    "page without cookie": (_forbidden_page, 403),
    "unknown page": (_unknown_page, 404),
    "selection accepted": (_selection_accepted, 303),
    "empty selection": (_selection_empty, 422),
    "page events": (_page_events, 200),
    "stylesheet": (_stylesheet, 200),
}


@pytest.mark.parametrize("visit", BROWSER_ANSWERS, ids=list(BROWSER_ANSWERS))
async def test_every_browser_answer_carries_the_security_headers(shim: Shim, visit: str) -> None:
    route, status = BROWSER_ANSWERS[visit]
    answer = await route(shim)
    assert answer.status_code == status
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["x-content-type-options"] == "nosniff"
    if answer.headers.get("content-type", "").startswith("text/html"):
        policy = [part.strip() for part in answer.headers["content-security-policy"].split(";")]
        assert "default-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy


async def test_the_callers_routes_are_left_as_they_were(shim: Shim) -> None:
    answer = await shim.http.get(f"/v1/authorizations/{shim.new_flow().flow_id}", headers=CALLER)
    assert answer.status_code == 200
    assert "content-security-policy" not in answer.headers


async def test_no_page_is_served_from_another_origin(shim: Shim) -> None:
    assert (await shim.http.get("/docs")).status_code == 404  # Swagger UI would load from a CDN
    assert (await shim.http.get("/openapi.json")).status_code == 200
