"""The selection form as people use it: by keyboard alone, submitted empty by mistake, and submitted at the
same moment as the partner's own server selects through the caller route."""

from __future__ import annotations

import threading

import httpx
import pytest
from playwright.sync_api import Browser, Page, Response
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.support.journey import STEP_TIMEOUT_MS, Browsing, HostedStack

pytestmark = [pytest.mark.integration, pytest.mark.browser]

MAX_TABS = 30  # a handful of controls on the page; more presses means focus never reaches the target


def tab_to(page: Page, selector: str) -> None:
    """Presses Tab until the focused element matches `selector`."""
    for _ in range(MAX_TABS):
        page.keyboard.press("Tab")
        if page.evaluate("selector => document.activeElement.matches(selector)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


def moves_on_until(page: Page, selector: str) -> None:
    """Without JavaScript the page reloads itself (its <meta refresh>) until `selector` shows (every flow
    here moves on within seconds)."""
    try:
        page.locator(selector).first.wait_for(timeout=STEP_TIMEOUT_MS)
    except PlaywrightTimeoutError:
        raise AssertionError(f"{selector} never showed: {page.locator('main').inner_text()}") from None


def is_selection_post(response: Response) -> bool:
    return response.request.method == "POST" and response.url.endswith("/selection")


def submit_nothing(browsing: Browsing) -> None:
    """Connect pressed with nothing ticked: the form comes back as a 422."""
    with browsing.page.expect_response(is_selection_post) as answer:
        browsing.page.get_by_role("button", name="Connect").click()
    assert answer.value.status == 422
    browsing.page.wait_for_load_state()


def test_selection_form_works_by_keyboard_alone(stack: HostedStack, browsing: Browsing) -> None:
    flow = stack.start_flow("Facebook", "group")
    browsing.consent(flow)
    browsing.shown("awaiting_selection")
    page = browsing.page

    tab_to(page, 'input[type="checkbox"][name="ids"]:not(:checked)')
    picked = page.evaluate("document.activeElement.value")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused checkbox is visibly focused"
    page.keyboard.press("Space")
    assert page.locator(f'input[name="ids"][value="{picked}"]').is_checked()
    tab_to(page, "button, input[type=submit]")
    label = page.evaluate("document.activeElement.textContent || document.activeElement.value")
    assert label.strip() == "Connect"
    with page.expect_navigation():
        page.keyboard.press("Enter")

    result = browsing.shown("completed")
    event = stack.terminal_event(flow["flow_id"])
    (credential,) = event["data"]["credentials"]
    assert credential["id"].endswith(picked)
    assert credential["name"] in result["text"]


def test_empty_selection_is_shown_again_with_a_message(stack: HostedStack, browsing: Browsing) -> None:
    flow = stack.start_flow("Twitter", "page")
    browsing.consent(flow)
    before = browsing.shown("awaiting_selection")
    offered = browsing.offered_ids()
    page = browsing.page

    submit_nothing(browsing)
    again = browsing.shown("awaiting_selection")
    assert again["form"]
    message = set(again["text"].splitlines()) - set(before["text"].splitlines())
    assert message, "the page says why nothing happened"
    assert browsing.offered_ids() == offered, "every choice is still there, none ticked for the user"
    assert page.locator('input[name="ids"]:checked').count() == 0
    assert stack.flow(flow["flow_id"])["status"] == "awaiting_selection"


def test_after_an_empty_selection_the_page_still_follows_the_flow(
    stack: HostedStack, browsing: Browsing
) -> None:
    flow = stack.start_flow("YouTube", "page")
    browsing.consent(flow)
    browsing.shown("awaiting_selection")
    offered = browsing.offered_ids()
    submit_nothing(browsing)
    browsing.shown("awaiting_selection")  # shown at the form's address, /connect/{flow_id}/selection
    loaded = len(browsing.navigations)

    assert stack.caller_selects(flow["flow_id"], offered[:1]).status_code == 202
    browsing.shown("completed")
    assert len(browsing.navigations) == loaded, "the page moved on without a reload"
    fetched = [request.url for request in browsing.requests if request.resource_type == "fetch"]
    assert fetched
    assert all(url.endswith(f"/connect/{flow['flow_id']}") for url in fetched), fetched


def test_page_and_caller_selecting_at_once_one_wins_the_other_gets_409(
    stack: HostedStack, browsing: Browsing
) -> None:
    flow = stack.start_flow("LinkedIn", "page")
    flow_id = flow["flow_id"]
    browsing.consent(flow)
    browsing.shown("awaiting_selection")
    page = browsing.page
    by_page, by_caller = browsing.offered_ids()[:2]
    page.locator(f'input[name="ids"][value="{by_page}"]').check()

    start = threading.Barrier(2, timeout=10)
    caller: list[httpx.Response] = []

    def caller_selects() -> None:
        start.wait()
        caller.append(stack.caller_selects(flow_id, [by_caller]))

    racer = threading.Thread(target=caller_selects)
    racer.start()
    page_status: int | None = None
    try:
        start.wait()
        with page.expect_response(is_selection_post, timeout=5_000) as answer:
            page.get_by_role("button", name="Connect").click(timeout=3_000)
        page_status = answer.value.status
    except PlaywrightTimeoutError:
        # the caller chose first and the live page had already withdrawn its form: it lost without
        # posting (a page that does post late is told 409: the test without JavaScript shows it)
        page_status = None
    finally:
        racer.join(timeout=30)
    outcome = {"page": page_status, "caller": caller[0].status_code}
    assert outcome in (
        {"page": 303, "caller": 409},
        {"page": 409, "caller": 202},
        {"page": None, "caller": 202},
    ), outcome
    if page_status is None:
        assert page.locator("main form").count() == 0

    winner = by_page if outcome["page"] == 303 else by_caller
    event = stack.terminal_event(flow_id)
    assert [credential["id"][-len(winner) :] for credential in event["data"]["credentials"]] == [winner]


def test_a_page_without_javascript_submitting_after_the_caller_gets_409_and_the_outcome(
    stack: HostedStack, chromium: Browser
) -> None:
    """Without JavaScript the open form cannot learn that the caller chose first: its late post is told; the
    pages reload themselves while the flow moves, and the finished one goes back to return_url."""
    context = chromium.new_context(java_script_enabled=False)
    try:
        browsing = Browsing(context.new_page())
        flow = stack.start_flow("Instagram", "page")
        browsing.consent(flow)
        page = browsing.page
        moves_on_until(page, "main form")
        by_page, by_caller = browsing.offered_ids()[:2]
        page.locator(f'input[name="ids"][value="{by_page}"]').check()
        assert stack.caller_selects(flow["flow_id"], [by_caller]).status_code == 202

        with page.expect_response(is_selection_post) as answer:
            page.get_by_role("button", name="Connect").click()
        assert answer.value.status == 409
        assert page.locator("main form").count() == 0, "the refused page no longer offers the form"
        event = stack.terminal_event(flow["flow_id"])
        (credential,) = event["data"]["credentials"]
        assert credential["id"].endswith(by_caller)
        moves_on_until(page, 'main[data-status="completed"]')
        assert credential["name"] in page.locator("main").inner_text()
        assert page.locator("a#continue").is_visible(), "without JavaScript the way back is a visible link"
        # and the page takes it by itself, as with JavaScript
        assert browsing.lands_at_partner(stack.partner)["status"] == ["completed"]
    finally:
        context.close()
