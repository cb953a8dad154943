"""`ui: "popup"`: the hosted pages in a popup the partner's page opened with /static/connect.js; the
result page hands the outcome to the return_url's origin. Needs a return_url; nothing severs the opener."""

from __future__ import annotations

import re

import pytest

from tests.support.browsers import FormFields, came_back, page
from tests.support.shim import CALLER, RETURN_URL, SHIM_URL, Shim
from worker.flows.flow import BrowserUI, FlowState

pytestmark = pytest.mark.anyio

START = {"network": "LinkedIn", "ui": "popup", "return_url": RETURN_URL}


async def test_a_popup_flow_needs_a_return_url(shim: Shim) -> None:
    answer = await shim.http.post("/v1/authorizations", json=START | {"return_url": None}, headers=CALLER)
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "return_url_required"
    assert shim.oktopost.requests == []
    created = await shim.http.post("/v1/authorizations", json=START, headers=CALLER)
    assert created.status_code == 201, created.text
    assert shim.flow(created.json()["flow_id"]).ui is BrowserUI.POPUP


async def test_the_popups_result_page_hands_the_outcome_to_the_return_urls_origin(shim: Shim) -> None:
    flow = shim.new_flow(ui=BrowserUI.POPUP)
    callback = await came_back(shim, flow)
    assert callback.status_code == 303
    assert callback.headers["location"] == f"{SHIM_URL}/connect/{flow.flow_id}"
    waiting = await page(shim, flow)
    assert FormFields(waiting.text).main["data-status"] == "verifying"
    assert shim.store.give_up(shim.flow(flow.flow_id), owner="").done
    result = await page(shim, flow)
    assert shim.flow(flow.flow_id).state is FlowState.EXPIRED
    link = re.search(r'<a id="continue"([^>]*)>', result.text)
    assert link is not None
    assert 'data-opener-origin="https://app.example"' in link.group(1)
    assert f'data-flow-id="{flow.flow_id}"' in link.group(1)
    assert 'data-outcome="expired"' in link.group(1)
    for answer in (callback, waiting, result):
        assert "cross-origin-opener-policy" not in answer.headers


async def test_a_hosted_flows_result_page_hands_nothing_to_an_opener(shim: Shim) -> None:
    flow = shim.new_flow()
    await shim.http.get(f"/v1/callback/{flow.flow_id}")  # denied
    assert "data-opener-origin" not in (await page(shim, flow)).text


async def test_the_partners_script_is_served_from_the_shims_origin(shim: Shim) -> None:
    answer = await shim.http.get("/static/connect.js")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/javascript")
    assert "OktopostConnect" in answer.text
    assert "oktopost-connect:result" in answer.text
