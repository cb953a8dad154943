"""A hosted flow seen from the browser's side: the callback's cookie kept in a client's jar, the flow's
page read back, the selection form's fields."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
from playwright.sync_api import ViewportSize

from tests.support.shim import Shim, new_token
from worker.flows.flow import Flow


class FormFields(HTMLParser):
    """The inputs of a page: (name, value, disabled) of each, and the main element's attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.inputs: list[tuple[str, str, bool]] = []
        self.main: dict[str, str] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "input":
            self.inputs.append((found.get("name", ""), found.get("value", ""), "disabled" in found))
        if tag == "main":
            self.main = found

    def value(self, name: str) -> str:
        return next(value for field, value, _ in self.inputs if field == name)

    def choices(self) -> dict[str, bool]:
        """Each checkbox's entity id and whether it can be ticked."""
        return {value: not disabled for field, value, disabled in self.inputs if field == "ids"}


async def came_back(shim: Shim, flow: Flow, token: str | None = None) -> httpx.Response:
    """The browser back at the callback with a fresh token (or `token`); its jar keeps the cookie."""
    return await shim.http.get(f"/v1/callback/{flow.flow_id}", params={"okt": token or new_token()})


async def page(shim: Shim, flow: Flow, client: httpx.AsyncClient | None = None) -> httpx.Response:
    return await (client or shim.http).get(f"/connect/{flow.flow_id}")


def csrf_of(html: str) -> str:
    return FormFields(html).value("csrf")


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# the window every browser test opens (wide enough for the pages' desktop layout)
VIEWPORT: ViewportSize = {"width": 900, "height": 760}
