"""The hosted page belongs to the browser that came back from the consent page: another browser with the
flow id gets nothing, and the page fetches nothing from anywhere but the shim."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage

from tests.support.journey import REFERENCE, Browsing, HostedStack

pytestmark = [pytest.mark.integration, pytest.mark.browser]

FACEBOOK_PAGES = ("Acme Inc", "Acme Products", "Acme Careers", "Acme Support")
SSE_TIMEOUT_MS = 5000  # a refused stream answers at once; a stream wrongly served would hang until this


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def test_a_browser_without_the_cookie_gets_403_and_sees_no_entity_names(
    stack: HostedStack, browsing: Browsing, context: BrowserContext, chromium: Browser
) -> None:
    flow = stack.start_flow("Facebook", "page")
    flow_id = flow["flow_id"]
    browsing.consent(flow)
    browsing.shown("awaiting_selection")
    page_url = f"{stack.shim_origin}/connect/{flow_id}"
    leaked_csrf = browsing.page.locator('input[type="hidden"][name="csrf"]').input_value()
    one_id = browsing.offered_ids()[0]

    (cookie,) = [c for c in context.cookies(page_url) if c["path"] == f"/connect/{flow_id}"]
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Lax")
    assert browsing.page.evaluate("document.cookie") == "", "no script on the page can read the cookie"

    stranger = chromium.new_context()
    try:
        tab = stranger.new_page()
        answer = tab.goto(page_url)
        assert answer is not None
        assert answer.status == 403
        shown = tab.content()
        for detail in (*FACEBOOK_PAGES, REFERENCE, flow_id):
            assert detail not in shown
        assert tab.locator("form").count() == 0

        events = stranger.request.get(f"{page_url}/events", timeout=SSE_TIMEOUT_MS)
        assert events.status == 403
        for detail in FACEBOOK_PAGES:
            assert detail not in events.text()
        stolen = stranger.request.post(
            f"{page_url}/selection", form={"ids": one_id, "csrf": leaked_csrf}, max_redirects=0
        )
        assert stolen.status == 403
    finally:
        stranger.close()

    # the browser that holds the cookie still needs the form's csrf token to submit
    forged = context.request.post(f"{page_url}/selection", form={"ids": one_id}, max_redirects=0)
    assert forged.status == 403
    assert stack.flow(flow_id)["status"] == "awaiting_selection", "nothing was selected by the refused posts"


def test_a_redirect_flow_confirmed_in_another_browser_goes_back_to_the_partner(
    stack: HostedStack, browsing: Browsing
) -> None:
    """The confirmation page's form answers 303 to the partner's return_url, another origin: the page's
    form-action lets the browser follow it (Chromium holds a form's redirects to it)."""
    flow = stack.start_flow("LinkedIn", "profile", ui="redirect")
    opened = httpx.get(flow["start_url"], timeout=10)  # the flow is bound to another browser than this one
    assert opened.status_code == 303
    browsing.page.goto(flow["redirect_url"])
    browsing.page.get_by_role("button", name="Approve").click()
    browsing.page.get_by_role("button", name="Connect").click()
    query = browsing.lands_at_partner(stack.partner)
    assert query["flow_id"] == [flow["flow_id"]]
    assert query["status"] == ["processing"]
    assert stack.terminal_event(flow["flow_id"])["type"] == "connection.completed"


def test_every_request_the_page_makes_goes_to_the_shim(stack: HostedStack, browsing: Browsing) -> None:
    refused: list[str] = []

    def note_refusal(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            refused.append(message.text)

    browsing.page.on("console", note_refusal)
    flow = stack.start_flow("LinkedIn", "group")
    browsing.consent(flow)
    browsing.shown("awaiting_selection")
    browsing.page.get_by_label("Acme Partners").check()
    browsing.page.get_by_role("button", name="Connect").click()
    browsing.shown("completed")
    browsing.lands_at_partner(stack.partner)

    urls = [request.url for request in browsing.requests]
    first = next(i for i, url in enumerate(urls) if urlsplit(url).path == f"/connect/{flow['flow_id']}")
    leaving = next(i for i, url in enumerate(urls) if origin(url) == stack.partner.origin)
    from_the_pages = urls[first:leaving]
    assert {origin(url) for url in from_the_pages} == {stack.shim_origin}, from_the_pages
    events = f"{stack.shim_origin}/connect/{flow['flow_id']}/events"
    assert any(url.startswith(events) for url in from_the_pages), "live updates come from the shim too"
    assert refused == [], "the page asked for nothing its own policy refuses"
