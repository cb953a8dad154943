"""The consent page a user's browser is sent to (`/oauth/authorize`), standing in for the social network's.

`?request=ID` shows Approve and Deny forms; `&decision=approve|deny` records the choice and answers 303
to the callback URL. For a profile, `&as=NETWORK_ID` approves as that existing profile (a reconnection in
place: verify answers the same credential id). A request is decided once: repeating the same decision
answers the same redirect (the same token for an approval), the opposite decision afterwards is refused
with 409.
"""

from __future__ import annotations

import re
from html import escape
from importlib import resources
from string import Template
from urllib.parse import urlsplit

from sandbox.accounts import Accounts
from sandbox.api import parse_form
from sandbox.authorizations import APPROVE, DENY, DecisionConflict, UnknownRequest
from sandbox.httpserver import Request, Response, html_response

_NETWORK_ID = re.compile(r"[0-9]{1,40}")
_PAGE = Template(resources.files("sandbox").joinpath("consent.html").read_text(encoding="utf-8"))


class ConsentPage:
    """Serves `/oauth/authorize`; never subject to faults or the rate limit."""

    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    def answer(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _message(405, "Method not allowed", "Use GET.", [("allow", "GET, HEAD")])
        form = parse_form(request.query)
        request_id = form.get("request", "")
        if not request_id:
            return _message(400, "Bad request", "The request parameter is missing.")
        decision = form.get("decision")
        if decision is not None and decision not in (APPROVE, DENY):
            return _message(400, "Bad request", "decision must be approve or deny.")
        as_profile = form.get("as")
        if as_profile is not None and not _NETWORK_ID.fullmatch(as_profile):
            return _message(400, "Bad request", "as must be a profile's network id (digits).")
        try:
            if decision is None:
                return self._page(request_id, as_profile)
            account, _ = self._accounts.find_request(request_id)
            location = account.authorizations.decide(request_id, decision, as_profile)
        except UnknownRequest:
            return _message(404, "Unknown authorization request", "It may have been reset; start again.")
        except DecisionConflict:
            return _message(
                409, "Already decided", "This authorization request was already answered otherwise."
            )
        return html_response(303, _redirect_page(location), [("location", location)])

    def _page(self, request_id: str, as_profile: str | None) -> Response:
        account, authorization = self._accounts.find_request(request_id)
        as_field = f'<input type="hidden" name="as" value="{as_profile}">' if as_profile else ""
        callback = urlsplit(authorization.callback_url)
        page = _PAGE.substitute(
            network=escape(authorization.network),
            entity_type=escape(authorization.entity_type),
            account=escape(account.id),
            callback_origin=escape(f"{callback.scheme}://{callback.netloc}"),
            request_id=escape(request_id),
            as_field=as_field,
        )
        return html_response(200, page, [("cache-control", "no-store")])


def _message(status: int, title: str, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title></head>"
        f"<body><h1>{escape(title)}</h1><p>{escape(text)}</p></body></html>"
    )
    return html_response(status, page, headers)


def _redirect_page(location: str) -> str:
    return f'<!doctype html><html lang=en><body><a href="{escape(location)}">Continue</a></body></html>'
