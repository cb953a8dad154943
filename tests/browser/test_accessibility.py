"""Every state of the hosted pages passes axe-core's WCAG 2.1 A and AA rules, in every language and in the
light and the dark scheme.

One browser profile holds the cookies of a few real flows; the flows are put in each state (by the user's
browser through the sandbox, or as the worker would, through the flow store on the stack's Redis), and each
state's page is shown in each language, and in each scheme, with axe-core (vendored: tests/browser/axe/)
injected. To keep it quick a page is loaded once and its other languages written into the open document.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route

from api_shim.languages import LANGUAGES
from api_shim.pages import DARK_CARD
from tests.support.browsers import VIEWPORT
from tests.support.flows import consent
from tests.support.journey import STEP_TIMEOUT_MS, Browsing, HostedStack, start_hosted_stack
from tests.support.stack import RedisServer
from worker.config.brand import tint_readable_on
from worker.flows.flow import Flow, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames

pytestmark = [pytest.mark.integration, pytest.mark.browser]

AXE = Path(__file__).parent / "axe" / "axe.min.js"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
SCHEMES = ("light", "dark")
# The violations axe finds, each with the first few elements it found it on.
AUDIT = """
async tags => {
  const result = await axe.run(document, {runOnly: {type: "tag", values: tags}, resultTypes: ["violations"]});
  return result.violations.map(v => ({
    rule: v.id, help: v.help, on: v.nodes.slice(0, 3).map(node => node.target.join(" ")),
  }));
}
"""
LOOK = """
() => ({
  lang: document.documentElement.lang,
  card: getComputedStyle(document.querySelector("main")).backgroundColor,
  heading: document.querySelector("h1").innerText,
})
"""


class Auditor:
    """Loads a page in each language and scheme and keeps what axe-core found there."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.violations: list[str] = []
        self.looks: dict[tuple[str, str, str], dict[str, str]] = {}

    def audit(self, state: str, show: Callable[[Page, str], None]) -> None:
        """Each language's page is shown once; the scheme changes under it, as a system's setting does."""
        for language in LANGUAGES:
            self.page.emulate_media(color_scheme="light")
            self.page.set_extra_http_headers({"Accept-Language": language})
            show(self.page, language)
            self.page.locator("main h1").wait_for(timeout=STEP_TIMEOUT_MS)
            for scheme in SCHEMES:
                self.page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
                self.looks[state, language, scheme] = self.page.evaluate(LOOK)
                for found in self.page.evaluate(AUDIT, WCAG_21_AA):
                    self.violations.append(f"{state} [{language}, {scheme}]: {found}")


def opens(url: str, status: str | None = None) -> Callable[[Page, str], None]:
    """The page at `url`: loaded once, then in each other language its HTML (fetched with the browser's
    cookies) written into the open document, whose stylesheets and axe-core are loaded already."""

    def show(page: Page, language: str) -> None:
        if page.url == url:
            answer = page.context.request.get(url, headers={"Accept-Language": language})
            # "load": the stylesheets too, or the scheme's colours may be read before they apply
            page.set_content(answer.text(), wait_until="load")
        else:
            page.goto(url, wait_until="load")
        if status is not None:
            page.locator(f'main[data-status="{status}"]').wait_for(timeout=STEP_TIMEOUT_MS)

    return show


def submits_nothing(url: str) -> Callable[[Page, str], None]:
    """The selection page submitted with nothing chosen (the language is the page's Accept-Language)."""

    def show(page: Page, _language: str) -> None:
        page.goto(url, wait_until="domcontentloaded")
        with page.expect_navigation(wait_until="domcontentloaded"):
            page.get_by_role("button").click()
        page.locator("#selection-message").wait_for(timeout=STEP_TIMEOUT_MS)

    return show


@pytest.fixture
def profile(chromium: Browser, stack: HostedStack) -> Iterator[BrowserContext]:
    """A browser with axe-core in every page (an init script: the pages' CSP does not apply to it), whose
    result pages stay on screen: the partner's return page answers 204, so the browser stays."""
    context = chromium.new_context(viewport=VIEWPORT, bypass_csp=True)
    context.add_init_script(path=AXE)

    def stay(route: Route) -> None:
        route.fulfill(status=204)

    context.route(f"{stack.partner.origin}/**", stay)
    try:
        yield context
    finally:
        context.close()


def flow_store(stack: HostedStack) -> FlowStore:
    """The flow store as the stack's worker sees it: for putting flows in states a user cannot reach
    on demand (connecting, failed, expired)."""
    return FlowStore(stack.pipeline.redis(), RedisNames(stack.pipeline.prefix), Lifetimes())


def stored(store: FlowStore, flow_id: str) -> Flow:
    flow = store.get(flow_id)
    assert flow is not None
    return flow


def test_every_page_state_passes_axe_in_every_language_and_scheme(
    stack: HostedStack, profile: BrowserContext
) -> None:
    browsing = Browsing(profile.new_page())
    auditor = Auditor(browsing.page)
    store = flow_store(stack)
    shim = stack.shim_origin

    chosen = stack.start_flow("Facebook", "page")
    browsing.consent(chosen)
    browsing.shown("awaiting_selection")
    page_url = f"{shim}/connect/{chosen['flow_id']}"
    auditor.audit("selection", opens(page_url, "awaiting_selection"))
    auditor.audit("selection with an error", submits_nothing(page_url))
    waiting = stored(store, chosen["flow_id"])
    assert store.submit_selection(waiting, waiting.offered_ids()[1:2]).done  # queued for nobody
    auditor.audit("waiting", opens(page_url, "completing"))
    assert store.fail(stored(store, chosen["flow_id"]), "token_invalid", "refused", 1, owner="").done
    auditor.audit("failed", opens(page_url, "failed"))

    lapsing = stack.start_flow("Instagram", "group")
    browsing.consent(lapsing)
    browsing.shown("awaiting_selection")
    assert store.give_up(stored(store, lapsing["flow_id"]), owner="").done
    auditor.audit("expired", opens(f"{shim}/connect/{lapsing['flow_id']}", "expired"))

    completed = stack.start_flow("LinkedIn")
    browsing.consent(completed)
    browsing.shown("completed")
    auditor.audit("completed", opens(f"{shim}/connect/{completed['flow_id']}", "completed"))

    denied = stack.start_flow("Twitter")
    browsing.consent(denied, decision="Deny")
    browsing.shown("failed")
    auditor.audit("denied", opens(f"{shim}/connect/{denied['flow_id']}", "failed"))

    # a redirect flow without return_url: its callback answers with a small page of its own
    redirected = httpx.post(
        f"{shim}/v1/authorizations",
        json={"network": "YouTube", "ui": "redirect"},
        headers=stack.pipeline.headers,
        timeout=15,
    )
    assert redirected.status_code == 201, redirected.text
    auditor.audit("redirect flow's page", opens(consent(redirected.json()["redirect_url"]), "verifying"))

    auditor.audit("404", opens(f"{shim}/connect/{secrets.token_hex(20)}"))
    profile.clear_cookies()
    auditor.audit("403", opens(f"{shim}/connect/{denied['flow_id']}"))

    assert not auditor.violations, "\n".join(auditor.violations)
    assert_spoken_and_schemed(auditor.looks)


def assert_spoken_and_schemed(looks: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    """What was audited is what was asked for: each language, each scheme."""
    for (state, language, scheme), look in looks.items():
        assert look["lang"] == language, (state, language, scheme)
        if language != "en":
            assert look["heading"] != looks[state, "en", scheme]["heading"], (state, language)
        if scheme == "dark":
            assert look["card"] != looks[state, language, "light"]["card"], (state, language)


BRAND_COLOR = "#8a1538"  # dark enough for white text, far too dark for text on the dark card


def test_a_brands_colour_is_its_links_accent_readable_in_both_schemes(
    redis_server: RedisServer, chromium: Browser
) -> None:
    with ExitStack() as resources:
        branded = start_hosted_stack(
            redis_server,
            resources,
            hosted_ui_color=BRAND_COLOR,
            hosted_ui_support_url="https://help.partner.example/connect",
        )
        context = chromium.new_context(viewport=VIEWPORT, bypass_csp=True)
        resources.callback(context.close)
        context.add_init_script(path=AXE)
        auditor = Auditor(context.new_page())
        auditor.audit("404, branded", opens(f"{branded.shim_origin}/connect/{secrets.token_hex(20)}"))
        link_colours = {}
        for scheme in SCHEMES:
            auditor.page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
            link_colours[scheme] = auditor.page.evaluate(
                "() => getComputedStyle(document.querySelector('.support a')).color"
            )
    assert not auditor.violations, "\n".join(auditor.violations)
    assert link_colours == {"light": rgb(BRAND_COLOR), "dark": rgb(tint_readable_on(BRAND_COLOR, DARK_CARD))}


def rgb(color: str) -> str:
    red, green, blue = (int(color[index : index + 2], 16) for index in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"
