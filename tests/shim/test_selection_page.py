"""POST /connect/{flow_id}/selection: the hosted page's form, from the browser the flow is bound to."""

from __future__ import annotations

from urllib.parse import urlencode

import httpx
import pytest

from tests.support.browsers import FormFields, came_back, csrf_of, page
from tests.support.shim import CALLER, OFFERS, SHIM_URL, Shim
from worker.flows.flow import Flow, FlowState

pytestmark = pytest.mark.anyio

FORM = {"content-type": "application/x-www-form-urlencoded"}


async def _awaiting_selection(shim: Shim) -> tuple[Flow, str]:
    """A hosted flow offering OFFERS, this browser bound to it, and the csrf of the page it was shown."""
    flow = shim.new_flow()
    await came_back(shim, flow)
    flow = shim.offer(shim.flow(flow.flow_id), OFFERS)
    return flow, csrf_of((await page(shim, flow)).text)


async def _submit(browser: httpx.AsyncClient, flow: Flow, ids: list[str], csrf: str | None) -> httpx.Response:
    fields = [("ids", entity_id) for entity_id in ids] + ([("csrf", csrf)] if csrf is not None else [])
    return await browser.post(f"/connect/{flow.flow_id}/selection", content=urlencode(fields), headers=FORM)


def _completions(shim: Shim) -> int:
    return [state for _, state in shim.enqueuer.enqueued].count(FlowState.COMPLETING)


async def test_a_selection_from_the_page_queues_completion_and_goes_back_to_the_page(shim: Shim) -> None:
    flow, csrf = await _awaiting_selection(shim)
    chosen = [OFFERS[1].id, OFFERS[2].id]
    answer = await _submit(shim.http, flow, chosen, csrf)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"{SHIM_URL}/connect/{flow.flow_id}"
    assert shim.flow(flow.flow_id).state is FlowState.COMPLETING
    assert shim.enqueuer.enqueued[-1] == (flow.flow_id, FlowState.COMPLETING)
    submitted = shim.store.events(flow.flow_id)[-1]
    assert (submitted["type"], submitted["data"]["ids"]) == ("selection.submitted", chosen)
    assert FormFields((await page(shim, flow)).text).main["data-status"] == "completing"


async def test_nothing_checked_shows_the_form_again_with_a_message(shim: Shim) -> None:
    flow, csrf = await _awaiting_selection(shim)
    answer = await _submit(shim.http, flow, [], csrf)
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("text/html")
    fields = FormFields(answer.text)
    assert fields.main["data-status"] == "awaiting_selection"
    assert set(fields.choices()) == {offer.id for offer in OFFERS}
    assert "Choose at least one page" in answer.text
    assert shim.flow(flow.flow_id).state is FlowState.AWAITING_SELECTION
    assert (await _submit(shim.http, flow, [OFFERS[0].id], fields.value("csrf"))).status_code == 303


async def test_an_id_not_offered_shows_the_form_again(shim: Shim) -> None:
    flow, csrf = await _awaiting_selection(shim)
    answer = await _submit(shim.http, flow, ["someone-elses-page"], csrf)
    assert answer.status_code == 422
    assert shim.flow(flow.flow_id).state is FlowState.AWAITING_SELECTION


@pytest.mark.parametrize("csrf", [None, "", "0" * 64])
async def test_a_selection_without_the_csrf_token_is_403(shim: Shim, csrf: str | None) -> None:
    flow, _ = await _awaiting_selection(shim)
    answer = await _submit(shim.http, flow, [OFFERS[0].id], csrf)
    assert answer.status_code == 403
    assert shim.flow(flow.flow_id).state is FlowState.AWAITING_SELECTION
    assert _completions(shim) == 0


async def test_a_selection_from_a_browser_without_the_cookie_is_403_even_with_the_csrf_token(
    shim: Shim,
) -> None:
    flow, csrf = await _awaiting_selection(shim)
    async with shim.another_browser() as other:
        answer = await _submit(other, flow, [OFFERS[0].id], csrf)
    assert answer.status_code == 403
    assert "Page 0" not in answer.text
    assert shim.flow(flow.flow_id).state is FlowState.AWAITING_SELECTION


async def test_when_the_page_submits_first_the_caller_route_gets_409(shim: Shim) -> None:
    flow, csrf = await _awaiting_selection(shim)
    assert (await _submit(shim.http, flow, [OFFERS[0].id], csrf)).status_code == 303
    late = await shim.http.post(
        f"/v1/authorizations/{flow.flow_id}/selection", json={"ids": [OFFERS[1].id]}, headers=CALLER
    )
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "wrong_state"
    assert shim.store.events(flow.flow_id)[-1]["data"]["ids"] == [OFFERS[0].id]


async def test_when_the_caller_route_submits_first_the_page_gets_409(shim: Shim) -> None:
    flow, csrf = await _awaiting_selection(shim)
    first = await shim.http.post(
        f"/v1/authorizations/{flow.flow_id}/selection", json={"ids": [OFFERS[1].id]}, headers=CALLER
    )
    assert first.status_code == 202
    late = await _submit(shim.http, flow, [OFFERS[0].id], csrf)
    assert late.status_code == 409
    assert late.headers["content-type"].startswith("text/html")
    assert FormFields(late.text).main["data-status"] == "completing"
    assert "already moved on" in late.text
    assert _completions(shim) == 1
