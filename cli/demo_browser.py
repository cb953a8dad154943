"""The user's browser in `oktopost-connect demo`'s hosted flow, driven over HTTP as a browser would: it
follows the callback's 303 to the flow's page and keeps the cookie it was given, reads the page, and
submits the selection form with the form's own csrf field."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

import httpx


class PageError(Exception):
    """The hosted page did not answer as a browser expects; the message says how."""


@dataclass
class HostedPage:
    """What a browser finds on a flow's page: its status and, while awaiting a selection, the form."""

    status: str = ""
    action: str = ""
    csrf: str = ""
    choices: list[str] = field(default_factory=list)  # the ids of the checkboxes that can be ticked
    connected: list[str] = field(default_factory=list)  # the ids shown as already connected
    continue_url: str = ""


class _PageReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = HostedPage()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "main":
            self.page.status = found.get("data-status", "")
        elif tag == "form":
            self.page.action = found.get("action", "")
        elif tag == "a" and found.get("id") == "continue":
            self.page.continue_url = found.get("href", "")
        elif tag == "input" and found.get("name") == "csrf":
            self.page.csrf = found.get("value", "")
        elif tag == "input" and found.get("name") == "ids":
            (self.page.connected if "disabled" in found else self.page.choices).append(found.get("value", ""))


class HostedBrowser:
    """One browser: its own cookie jar, no redirect followed unseen."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(timeout=10.0, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def page_url(self, flow_id: str) -> str:
        return f"{self.base_url}/connect/{flow_id}"

    def come_back(self, callback_url: str, flow_id: str) -> None:
        """The callback (its URL carries the okt token: never printed) and its 303 to the flow's page."""
        back = self.http.get(callback_url)
        if back.status_code != 303 or back.headers.get("location") != self.page_url(flow_id):
            raise PageError(f"the callback answered {back.status_code}, not 303 to the flow's page")
        if not back.cookies:
            raise PageError("the callback gave the browser no cookie")

    def read(self, flow_id: str) -> HostedPage:
        answer = self.http.get(self.page_url(flow_id))
        if answer.status_code != 200:
            raise PageError(f"GET /connect/{flow_id[:8]}… answered {answer.status_code}")
        reader = _PageReader()
        reader.feed(answer.text)
        return reader.page

    def submit(self, flow_id: str, page: HostedPage, ids: list[str]) -> None:
        """Ticks `ids` and presses Connect: the form posts back and the browser is sent to the page."""
        answer = self.http.post(f"{self.base_url}{page.action}", data={"ids": ids, "csrf": page.csrf})
        if answer.status_code != 303 or answer.headers.get("location") != self.page_url(flow_id):
            raise PageError(f"the selection form answered {answer.status_code}, not 303 back to the page")
