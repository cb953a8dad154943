"""The `ui` option and the hosted flow's callback: the browser that came back gets the flow's cookie and
goes to the flow's page; nobody else gets in."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.browsers import came_back, page
from tests.support.shim import CALLER, SHIM_URL, TOKEN, Shim, open_shim
from worker.flows.flow import BrowserUI, FlowState

pytestmark = pytest.mark.anyio

START = {"network": "facebook", "type": "page", "return_url": "https://app.example/done"}


def _cookie_attributes(set_cookie: str) -> dict[str, str]:
    _, *attributes = (part.strip() for part in set_cookie.split(";"))
    return {name.lower(): value for name, _, value in (item.partition("=") for item in attributes)}


async def _start(shim: Shim, **extra: Any) -> str:
    answer = await shim.http.post("/v1/authorizations", json=START | extra, headers=CALLER)
    assert answer.status_code == 201, answer.text
    flow_id: str = answer.json()["flow_id"]
    return flow_id


async def test_a_flow_is_hosted_unless_the_caller_asks_for_the_redirect(shim: Shim) -> None:
    assert shim.flow(await _start(shim)).ui is BrowserUI.HOSTED
    assert shim.flow(await _start(shim, ui="hosted")).ui is BrowserUI.HOSTED
    assert shim.flow(await _start(shim, ui="redirect")).ui is BrowserUI.REDIRECT


@pytest.mark.parametrize("ui", ["window", "POPUP", "HOSTED", "", None, 1])
async def test_another_ui_is_refused_with_422(shim: Shim, ui: object) -> None:
    answer = await shim.http.post("/v1/authorizations", json=START | {"ui": ui}, headers=CALLER)
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_request"
    assert shim.oktopost.requests == []


async def test_openapi_lists_the_ui_values(shim: Shim) -> None:
    schema = (await shim.http.get("/openapi.json")).json()
    ui = schema["components"]["schemas"]["AuthorizationRequest"]["properties"]["ui"]
    enum = ui.get("enum") or schema["components"]["schemas"][ui["$ref"].rsplit("/", 1)[-1]]["enum"]
    assert sorted(enum) == ["hosted", "popup", "redirect"]


async def test_the_callback_sends_the_browser_to_the_page_with_a_cookie_bound_to_the_flow(shim: Shim) -> None:
    flow = shim.new_flow()
    answer = await came_back(shim, flow, TOKEN)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"{SHIM_URL}/connect/{flow.flow_id}"
    cookies = answer.headers.get_list("set-cookie")
    assert len(cookies) == 1
    attributes = _cookie_attributes(cookies[0])
    assert attributes["path"] == f"/connect/{flow.flow_id}"
    assert attributes["samesite"].lower() == "lax"
    assert "httponly" in attributes
    assert "secure" in attributes
    assert shim.flow(flow.flow_id).state is FlowState.VERIFYING
    assert (await page(shim, flow)).status_code == 200


async def test_the_cookie_itself_is_not_kept_in_redis(shim: Shim) -> None:
    flow = shim.new_flow()
    answer = await came_back(shim, flow)
    value = answer.headers["set-cookie"].split(";")[0].partition("=")[2]
    assert len(value) >= 32
    stored = b"".join(
        b"".join(k + v for k, v in shim.store.redis.hgetall(key).items())
        for key in shim.store.redis.scan_iter(f"*{flow.flow_id}*")
        if shim.store.redis.type(key) == b"hash"
    )
    assert stored
    assert value.encode() not in stored


async def test_the_cookie_is_not_secure_only_when_the_shim_is_served_over_http() -> None:
    async with open_shim(public_base_url="http://127.0.0.1:8000") as shim:
        answer = await came_back(shim, shim.new_flow())
        assert answer.status_code == 303
        assert "secure" not in _cookie_attributes(answer.headers["set-cookie"])


async def test_a_repeated_callback_from_the_same_browser_keeps_its_page(shim: Shim) -> None:
    flow = shim.new_flow()
    first = await came_back(shim, flow, TOKEN)
    again = await came_back(shim, flow, TOKEN)
    assert first.status_code == again.status_code == 303
    assert first.headers["location"] == again.headers["location"]
    assert (await page(shim, flow)).status_code == 200
    assert shim.event_types(flow.flow_id).count("callback.received") == 1


async def test_a_repeated_callback_from_another_browser_gets_no_cookie_and_the_first_keeps_its_page(
    shim: Shim,
) -> None:
    flow = shim.new_flow()
    await came_back(shim, flow, TOKEN)
    async with shim.another_browser() as other:
        repeat = await other.get(f"/v1/callback/{flow.flow_id}", params={"okt": TOKEN})
        assert repeat.status_code == 303
        assert repeat.headers["location"] == f"{SHIM_URL}/connect/{flow.flow_id}"
        assert "set-cookie" not in repeat.headers
        assert (await page(shim, flow, other)).status_code == 403
    assert (await page(shim, flow)).status_code == 200


async def test_a_denied_hosted_flow_sends_the_browser_to_its_page_which_shows_the_denial(shim: Shim) -> None:
    flow = shim.new_flow()
    answer = await shim.http.get(f"/v1/callback/{flow.flow_id}", params={"error": "access_denied"})
    assert answer.status_code == 303
    assert answer.headers["location"] == f"{SHIM_URL}/connect/{flow.flow_id}"
    assert _cookie_attributes(answer.headers["set-cookie"])["path"] == f"/connect/{flow.flow_id}"
    shown = await page(shim, flow)
    assert shown.status_code == 200
    assert 'data-status="failed"' in shown.text
    assert "denied access" in shown.text
    assert "status=denied" in shown.text
    again = await shim.http.get(f"/v1/callback/{flow.flow_id}")
    assert again.status_code == 303
    assert "set-cookie" not in again.headers
    assert (await page(shim, flow)).status_code == 200


async def test_a_redirect_flow_has_no_page_for_anybody(shim: Shim) -> None:
    flow = shim.new_flow(ui=BrowserUI.REDIRECT)
    answer = await came_back(shim, flow)
    assert answer.headers["location"].startswith("https://app.example/done?")
    assert "set-cookie" not in answer.headers
    assert (await page(shim, flow)).status_code == 403
