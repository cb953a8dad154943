"""What the browser tests do again and again: a partner starting a hosted flow over HTTP, and a user's
browser going through the consent page and the shim's /connect pages."""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from playwright.sync_api import Page, Request
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.support.ledger import start_stack
from tests.support.partner import PartnerSite
from tests.support.stack import Pipeline, RedisServer, Sandbox

REFERENCE = "user-42"
STEP_TIMEOUT_MS = 15_000  # one stage of a flow on a busy two-core machine; the sandbox answers in ms

# Every value main[data-status] took in this document, so a test can tell the page moved by itself
# through a stage without reloading. It watches the whole document: the page may swap <main> whole.
STATUS_RECORDER = """
window.__statuses = [];
new MutationObserver(() => {
  const main = document.querySelector("main");
  const status = main && main.dataset.status;
  if (status && window.__statuses[window.__statuses.length - 1] !== status) window.__statuses.push(status);
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ["data-status"]});
"""

# Resolves in the page itself the moment main[data-status] is the wanted one, with what the page showed
# then: a terminal page leads on to return_url within seconds, so reading it afterwards would be too late.
STATUS_SHOWN = """
status => {
  const main = document.querySelector("main");
  if (!main || main.dataset.status !== status) return null;
  const scroller = document.scrollingElement || document.documentElement;
  return {
    text: main.innerText,
    body: document.body.innerText,
    seen: window.__statuses || [],
    form: main.querySelector("form") !== null,
    continue_href: (document.querySelector("a#continue") || {}).href || null,
    width: scroller.clientWidth,
    scrolls_sideways: scroller.scrollWidth > scroller.clientWidth,
  };
}
"""


@dataclass
class HostedStack:
    """A shim, a worker, a sandbox and the partner's site, all running; the caller's side over HTTP."""

    pipeline: Pipeline
    sandbox: Sandbox
    partner: PartnerSite

    @property
    def shim_origin(self) -> str:
        return self.pipeline.shim_url

    def start_flow(self, network: str, entity_type: str = "profile", ui: str = "hosted") -> dict[str, Any]:
        """A hosted (or popup) flow that returns to the partner's page, as a partner's server starts it."""
        body = {
            "network": network,
            "type": entity_type,
            "ui": ui,
            "reference": REFERENCE,
            "return_url": self.partner.return_url,
        }
        answer = httpx.post(
            f"{self.shim_origin}/v1/authorizations", json=body, headers=self.pipeline.headers, timeout=30
        )
        assert answer.status_code == 201, answer.text
        flow: dict[str, Any] = answer.json()
        return flow

    def flow(self, flow_id: str) -> dict[str, Any]:
        answer = httpx.get(
            f"{self.shim_origin}/v1/authorizations/{flow_id}", headers=self.pipeline.headers, timeout=10
        )
        answer.raise_for_status()
        flow: dict[str, Any] = answer.json()
        return flow

    def caller_selects(self, flow_id: str, ids: list[str]) -> httpx.Response:
        return httpx.post(
            f"{self.shim_origin}/v1/authorizations/{flow_id}/selection",
            json={"ids": ids},
            headers=self.pipeline.headers,
            timeout=30,
        )

    def terminal_event(self, flow_id: str, timeout: float = STEP_TIMEOUT_MS / 1000) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.flow(flow_id)["events"]
            ended = [event for event in events if event["type"] in TERMINAL_EVENTS]
            if ended:
                assert len(ended) == 1, ended
                return ended[0]
            time.sleep(0.1)
        raise AssertionError(f"flow {flow_id} did not end within {timeout} s: {self.flow(flow_id)}")


TERMINAL_EVENTS = ("connection.completed", "authorization.failed", "authorization.expired")


@dataclass
class Browsing:
    """One tab: every request it made and every top-level navigation, in order."""

    page: Page
    requests: list[Request] = field(default_factory=list)
    navigations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.add_init_script(STATUS_RECORDER)
        self.page.on("request", self._requested)
        self.page.on("framenavigated", self._navigated)

    def _requested(self, request: Request) -> None:
        self.requests.append(request)

    def _navigated(self, frame: Any) -> None:
        if frame == self.page.main_frame:
            self.navigations.append(frame.url)

    def consent(self, flow: dict[str, Any], decision: str = "Approve") -> None:
        """The sandbox's consent page, as the user sees it: one click, then the shim's page has loaded."""
        self.page.goto(flow["redirect_url"])
        self.page.get_by_role("button", name=decision).click()
        try:
            self.page.wait_for_url(f"**/connect/{flow['flow_id']}", timeout=STEP_TIMEOUT_MS)
        except PlaywrightTimeoutError:
            raise AssertionError(f"the callback led elsewhere: {self.page.url}") from None

    def shown(self, status: str, timeout_ms: int = STEP_TIMEOUT_MS) -> dict[str, Any]:
        """Waits until main[data-status] is `status`: the text it showed, the statuses it went through."""
        handle = self.page.wait_for_function(STATUS_SHOWN, arg=status, timeout=timeout_ms, polling=50)
        shown: dict[str, Any] = handle.json_value()
        return shown

    def lands_at_partner(self, partner: PartnerSite) -> dict[str, list[str]]:
        """Waits for the browser to reach the partner's return page; the query it arrived with."""
        self.page.wait_for_url(f"{partner.origin}/done?**", timeout=STEP_TIMEOUT_MS)
        self.page.get_by_text("Back at the partner app").wait_for()
        return parse_qs(urlsplit(self.page.url).query)

    def offered_ids(self) -> list[str]:
        """The ids of the checkboxes the user can still tick."""
        boxes = self.page.locator('main form input[type="checkbox"][name="ids"]:not([disabled])')
        return [box.get_attribute("value") or "" for box in boxes.all()]


def start_hosted_stack(redis_server: RedisServer, resources: ExitStack, **settings: Any) -> HostedStack:
    """Everything a hosted flow touches, registered on `resources` to be stopped in reverse order."""
    partner = PartnerSite()
    resources.callback(partner.close)
    pipeline, sandbox = start_stack(
        resources, redis_server.url, allowed_return_urls=f"https://app.example,{partner.origin}", **settings
    )
    return HostedStack(pipeline, sandbox, partner)
