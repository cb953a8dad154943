"""How the pages look: screenshots of the selection and the result for the docs, and a phone-sized
screen that needs no sideways scrolling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, ViewportSize

from tests.support.journey import Browsing, HostedStack

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# SCREENSHOT_DIR=docs/screenshots renews the pictures the docs show; otherwise they go to a temporary folder
SCREENSHOT_DIR = os.environ.get("SCREENSHOT_DIR")
SCREENSHOT_SIZE: ViewportSize = {"width": 720, "height": 540}  # the page grows it where it needs more
PHONE: ViewportSize = {"width": 320, "height": 640}


def hold_the_way_out(page: Page, stack: HostedStack) -> list[Route]:
    """Keeps the result page on screen: the step to return_url waits until the test lets it go."""
    held: list[Route] = []

    def hold(route: Route) -> None:
        held.append(route)

    page.route(f"{stack.partner.origin}/**", hold)
    return held


def pick_and_connect(browsing: Browsing, *names: str, button: str = "Connect") -> None:
    for name in names:
        browsing.page.get_by_label(name).check()
    browsing.page.get_by_role("button", name=button).click()


def test_selection_and_result_pages_are_screenshotted(
    stack: HostedStack, browsing: Browsing, tmp_path: Path
) -> None:
    folder = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page = browsing.page
    page.set_viewport_size(SCREENSHOT_SIZE)
    held = hold_the_way_out(page, stack)
    flow = stack.start_flow("Facebook", "page")
    browsing.consent(flow)
    browsing.shown("awaiting_selection")
    page.get_by_label("Acme Products").check()
    page.screenshot(path=folder / "selection.png", full_page=True)
    page.emulate_media(color_scheme="dark")
    page.screenshot(path=folder / "selection-dark.png", full_page=True)
    page.emulate_media(color_scheme="light")
    page.set_extra_http_headers({"Accept-Language": "de-DE,de;q=0.9"})
    page.reload()
    page.get_by_label("Acme Products").check()
    assert page.get_by_role("button", name="Verbinden").is_visible()
    page.screenshot(path=folder / "selection-de.png", full_page=True)

    pick_and_connect(browsing, "Acme Careers", button="Verbinden")
    browsing.shown("completed")
    page.set_extra_http_headers({"Accept-Language": "en"})
    page.reload()
    browsing.shown("completed")
    page.screenshot(path=folder / "result.png", full_page=True)
    for route in held:
        route.continue_()
    for picture in ("selection.png", "selection-dark.png", "selection-de.png", "result.png"):
        assert (folder / picture).stat().st_size > 5_000, "a picture of a page, not of a blank one"


def test_pages_fit_a_320_px_wide_screen_without_sideways_scrolling(
    stack: HostedStack, chromium: Browser
) -> None:
    # in German, whose words run longest of the pages' languages
    context = chromium.new_context(
        viewport=PHONE, is_mobile=True, extra_http_headers={"Accept-Language": "de"}
    )
    try:
        browsing = Browsing(context.new_page())
        hold_the_way_out(browsing.page, stack)
        flow = stack.start_flow("YouTube", "group")
        browsing.consent(flow)
        selection = browsing.shown("awaiting_selection")
        assert selection["width"] == PHONE["width"], "laid out for the phone, not zoomed out"
        assert not selection["scrolls_sideways"]
        assert "Gruppen" in selection["text"]
        pick_and_connect(browsing, "Acme Developers", button="Verbinden")
        result = browsing.shown("completed")
        assert not result["scrolls_sideways"]
    finally:
        context.close()
