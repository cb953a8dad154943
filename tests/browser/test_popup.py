"""The popup journey in a real browser: the partner's page (docs/examples/popup.html, served by the
partner's site on its own loopback port) opens the consent in a popup with the shim's /static/connect.js;
the popup goes through the shim's pages, hands the result back to the page and closes itself. A popup
closed early is reported once."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Response

from tests.support.journey import STEP_TIMEOUT_MS, HostedStack

pytestmark = [pytest.mark.integration, pytest.mark.browser]

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "popup.html"
PLACEHOLDER_SHIM = "https://connect.example.com"
SCREENSHOT_DIR = os.environ.get("SCREENSHOT_DIR")  # as in test_look.py: renews the docs' pictures
WATCHES_S = 1.0  # the opener's script looks for a closed popup every 250 ms: four looks


@pytest.fixture
def partner_page(stack: HostedStack) -> Iterator[list[dict[str, Any]]]:
    """The example page at the partner's /connect.html; the flows its server started, in order."""
    started: list[dict[str, Any]] = []

    def start() -> dict[str, Any]:
        started.append(stack.start_flow("LinkedIn", ui="popup"))
        return {"start_url": started[-1]["start_url"]}  # what the example page opens

    page = EXAMPLE.read_text().replace(PLACEHOLDER_SHIM, stack.shim_origin)
    stack.partner.pages["/connect.html"] = page.encode()
    stack.partner.starter = start
    try:
        yield started
    finally:
        stack.partner.pages.clear()
        stack.partner.starter = None


def test_the_popup_hands_the_result_to_the_partners_page_and_closes(
    stack: HostedStack, context: BrowserContext, partner_page: list[dict[str, Any]]
) -> None:
    page = context.new_page()
    page.goto(f"{stack.partner.origin}/connect.html")
    with context.expect_page(timeout=STEP_TIMEOUT_MS) as opened:
        page.get_by_role("button", name="Connect LinkedIn").click()
    popup = opened.value
    shim_answers: list[Response] = []
    popup.on("response", lambda answer: shim_answers.append(answer))
    popup.get_by_role("button", name="Approve").click()

    popup.locator('main[data-status="completed"]').wait_for(timeout=STEP_TIMEOUT_MS)
    if SCREENSHOT_DIR:
        popup.screenshot(path=Path(SCREENSHOT_DIR) / "popup-result.png")
    popup.wait_for_event("close", timeout=STEP_TIMEOUT_MS)
    outcome = page.locator("#outcome[data-result]")
    outcome.wait_for(timeout=STEP_TIMEOUT_MS)
    if SCREENSHOT_DIR:
        page.set_viewport_size({"width": 640, "height": 200})
        page.screenshot(path=Path(SCREENSHOT_DIR) / "popup-partner.png")

    (flow,) = partner_page
    result = json.loads(outcome.get_attribute("data-result") or "{}")
    assert result == {"type": "oktopost-connect:result", "flow_id": flow["flow_id"], "status": "completed"}
    assert "is connected" in outcome.inner_text()
    assert stack.terminal_event(flow["flow_id"])["type"] == "connection.completed"
    pages = [answer for answer in shim_answers if answer.url.startswith(f"{stack.shim_origin}/connect/")]
    assert pages, "the popup went through the shim's pages"
    for answer in pages:
        assert "cross-origin-opener-policy" not in answer.headers, answer.url
    assert page.locator("#outcome").get_attribute("data-closes") == "0", "a result is not a close"
    assert not [answer for answer in shim_answers if answer.url.startswith(f"{stack.partner.origin}/done")]


@pytest.mark.usefixtures("partner_page")
def test_a_popup_closed_before_the_end_is_reported_once(stack: HostedStack, context: BrowserContext) -> None:
    page = context.new_page()
    page.goto(f"{stack.partner.origin}/connect.html")
    with context.expect_page(timeout=STEP_TIMEOUT_MS) as opened:
        page.get_by_role("button", name="Connect LinkedIn").click()
    popup = opened.value
    popup.get_by_role("button", name="Approve").wait_for(timeout=STEP_TIMEOUT_MS)
    popup.close()

    page.locator('#outcome[data-closes="1"]').wait_for(timeout=STEP_TIMEOUT_MS)
    time.sleep(WATCHES_S)
    assert page.locator("#outcome").get_attribute("data-closes") == "1"
    assert page.locator("#outcome").get_attribute("data-result") is None
    assert "closed before the end" in page.locator("#outcome").inner_text()
