"""GET /v1/start/{flow_id} binds a flow to the browser that opens it; a callback from another browser is a
confirmation page whose form (csrf) makes the callback, never a silent claim or denial; `state` comes back."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.browsers import FormFields, text_of
from tests.support.shim import CALLER, REDIRECT_URL, RETURN_URL, SHIM_URL, Shim, new_token, open_shim
from worker.flows.flow import FlowState

pytestmark = pytest.mark.anyio

START = {"network": "LinkedIn", "return_url": RETURN_URL, "reference": "user-42"}


async def _started(shim: Shim, **extra: str) -> dict[str, str]:
    answer = await shim.http.post("/v1/authorizations", json=START | extra, headers=CALLER)
    assert answer.status_code == 201, answer.text
    created: dict[str, str] = answer.json()
    return created


async def _open_start(browser: httpx.AsyncClient, created: dict[str, str]) -> httpx.Response:
    opened = await browser.get(created["start_url"])
    assert opened.status_code == 303
    assert opened.headers["location"] == REDIRECT_URL
    return opened


async def test_start_url_binds_the_flow_to_the_browser_and_goes_on_to_oktopost(shim: Shim) -> None:
    created = await _started(shim)
    flow_id = created["flow_id"]
    assert created["start_url"] == f"{SHIM_URL}/v1/start/{flow_id}"
    opened = await _open_start(shim.http, created)
    cookie = opened.headers["set-cookie"].lower()
    for attribute in ("okc_start=", f"path=/v1/callback/{flow_id}", "httponly", "samesite=lax", "secure"):
        assert attribute in cookie
    assert shim.flow(flow_id).start_fp
    back = await shim.http.get(f"/v1/callback/{flow_id}", params={"okt": new_token()})
    assert back.status_code == 303  # the browser that started it: claimed at once, as before
    assert shim.flow(flow_id).state is FlowState.VERIFYING


async def test_a_callback_from_another_browser_is_a_confirmation_page_that_claims_nothing(shim: Shim) -> None:
    created = await _started(shim)
    flow_id = created["flow_id"]
    await _open_start(shim.http, created)
    async with shim.another_browser() as other:
        asked = await other.get(f"/v1/callback/{flow_id}", params={"okt": new_token()})
        assert asked.status_code == 200
        assert asked.headers["content-type"].startswith("text/html")
        words = text_of(asked.text)
        for shown in ("started in another browser", "LinkedIn", "user-42", "oktopost-connect"):
            assert shown in words
        assert shim.flow(flow_id).state is FlowState.AWAITING_CALLBACK
        assert shim.enqueuer.enqueued == []
        fields = FormFields(asked.text)
        form = {"csrf": fields.value("csrf"), "okt": fields.value("okt")}
        confirmed = await other.post(f"/v1/callback/{flow_id}/confirm", data=form)
    assert confirmed.status_code == 303
    assert confirmed.headers["location"] == f"{SHIM_URL}/connect/{flow_id}"
    assert shim.flow(flow_id).state is FlowState.VERIFYING
    assert shim.enqueuer.enqueued == [(flow_id, FlowState.VERIFYING)]


@pytest.mark.parametrize(
    ("ui", "form_action"), [("redirect", "'self' https://app.example"), ("hosted", "'self'")]
)
async def test_a_confirmation_page_lets_its_form_lead_where_the_confirmed_callback_goes(
    shim: Shim, ui: str, form_action: str
) -> None:
    """A redirect flow's confirmed callback answers 303 to its return_url, which browsers hold to the
    page's form-action: that origin is in it (a hosted flow's goes to the shim's own /connect/ page)."""
    created = await _started(shim, ui=ui)
    flow_id = created["flow_id"]
    await _open_start(shim.http, created)
    async with shim.another_browser() as other:
        asked = await other.get(f"/v1/callback/{flow_id}", params={"okt": new_token()})
        fields = FormFields(asked.text)
        confirmed = await other.post(
            f"/v1/callback/{flow_id}/confirm", data={"csrf": fields.value("csrf"), "okt": fields.value("okt")}
        )
    policy = dict(part.strip().split(" ", 1) for part in asked.headers["content-security-policy"].split(";"))
    assert policy["form-action"] == form_action
    assert policy["default-src"] == "'self'"
    assert urlsplit(confirmed.headers["location"]).netloc == (
        "app.example" if ui == "redirect" else "shim.example"
    )


async def test_the_confirmation_needs_its_cookie_and_csrf(shim: Shim) -> None:
    created = await _started(shim)
    flow_id = created["flow_id"]
    await _open_start(shim.http, created)
    async with shim.another_browser() as other, shim.another_browser() as third:
        asked = await other.get(f"/v1/callback/{flow_id}", params={"okt": new_token()})
        okt = FormFields(asked.text).value("okt")
        forged = await other.post(f"/v1/callback/{flow_id}/confirm", data={"csrf": "0" * 64, "okt": okt})
        cookieless = await third.post(
            f"/v1/callback/{flow_id}/confirm", data={"csrf": FormFields(asked.text).value("csrf"), "okt": okt}
        )
    assert forged.status_code == 403
    assert cookieless.status_code == 403
    assert shim.flow(flow_id).state is FlowState.AWAITING_CALLBACK


async def test_a_callback_without_okt_from_another_browser_does_not_fail_the_flow(shim: Shim) -> None:
    created = await _started(shim)
    flow_id = created["flow_id"]
    await _open_start(shim.http, created)
    async with shim.another_browser() as other:
        asked = await other.get(f"/v1/callback/{flow_id}", params={"error": "access_denied"})
        assert asked.status_code == 200
        assert shim.flow(flow_id).state is FlowState.AWAITING_CALLBACK
        fields = FormFields(asked.text)
        confirmed = await other.post(
            f"/v1/callback/{flow_id}/confirm",
            data={"csrf": fields.value("csrf"), "error": fields.value("error")},
        )
    assert confirmed.status_code == 303
    assert shim.flow(flow_id).state is FlowState.FAILED


async def test_a_flow_whose_start_url_was_never_opened_is_claimed_as_before(shim: Shim) -> None:
    created = await _started(shim)
    back = await shim.http.get(f"/v1/callback/{created['flow_id']}", params={"okt": new_token()})
    assert back.status_code == 303


async def test_a_second_browser_opening_the_start_url_is_not_bound(shim: Shim) -> None:
    created = await _started(shim)
    await _open_start(shim.http, created)
    async with shim.another_browser() as other:
        second = await _open_start(other, created)
        assert "set-cookie" not in second.headers
        asked = await other.get(f"/v1/callback/{created['flow_id']}", params={"okt": new_token()})
    assert asked.status_code == 200  # a confirmation, not a claim


async def test_with_require_start_every_callback_without_the_cookie_is_confirmed() -> None:
    async with open_shim(require_start=True) as shim:
        created = await _started(shim)
        asked = await shim.http.get(f"/v1/callback/{created['flow_id']}", params={"okt": new_token()})
        assert asked.status_code == 200
        assert "started in another browser" in text_of(asked.text)
        assert shim.flow(created["flow_id"]).state is FlowState.AWAITING_CALLBACK


async def test_state_comes_back_on_return_url_and_in_the_started_event(shim: Shim) -> None:
    state = "csrf-4f9a b=1&c=/?"
    created = await _started(shim, ui="redirect", state=state)
    flow_id = created["flow_id"]
    started = shim.store.events(flow_id)[0]
    assert started["type"] == "authorization.started"
    assert started["data"]["state"] == state
    back = await shim.http.get(f"/v1/callback/{flow_id}", params={"okt": new_token()})
    query = parse_qs(urlsplit(back.headers["location"]).query)
    assert query["state"] == [state]
    assert query["flow_id"] == [flow_id]


async def test_a_flow_without_state_has_none_in_its_started_event(shim: Shim) -> None:
    created = await _started(shim, ui="redirect")
    assert "state" not in shim.store.events(created["flow_id"])[0]["data"]


@pytest.mark.parametrize("state", ["", "x" * 257, "line\nbreak", "tab\there", "caf\u00e9"])
async def test_a_state_that_is_not_printable_or_too_long_is_refused(shim: Shim, state: str) -> None:
    answer = await shim.http.post("/v1/authorizations", json=START | {"state": state}, headers=CALLER)
    assert answer.status_code == 422
