"""The hosted connect pages: one template per stage of a flow, rendered for the browser it is bound to.

Templates (Jinja2, autoescaped) are in api_shim/templates/, the stylesheet and the script in
api_shim/static/, served by the shim itself: the pages load nothing from another origin. Every page says
in plain words where the flow is, in the language api_shim/languages.py chooses, under its tenant's brand
(worker/config/brand.py); the routes that serve them are in api_shim/routes/connect.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from api_shim import languages
from api_shim.browser import html_policy
from api_shim.languages import N_
from api_shim.security import return_url_with
from worker.config.brand import Brand, tint_readable_on
from worker.config.settings import Settings, origin_of
from worker.config.tenants import DEFAULT_TENANT
from worker.events import TERMINAL_TYPES
from worker.flows.flow import BrowserUI, Flow, FlowState

STATIC_PATH = "/connect/static"
BRAND_PATH = "/connect/brand"  # a tenant's stylesheet ({tenant}.css) and logo ({tenant}/logo)
DEFAULT_ACCENT = "#1f5fd6"  # connect.css's own
DARK_CARD = "#1b2029"  # connect.css's card in the dark scheme, behind the pages' links
# what a partner's page loads from {PUBLIC_BASE_URL}/static/connect.js to open popup flows
PARTNER_SCRIPT = (Path(__file__).parent / "partner" / "connect.js").read_bytes()
_HERE = Path(__file__).parent
CONTINUE_SECONDS = 2  # a finished page shows this long before the browser goes back to return_url
# without JavaScript a waiting page reloads itself this often (a <meta refresh> in <noscript>: a browser that
# runs the page's script never sees it, and updates the page from its events instead)
CHECK_AGAIN_SECONDS = 3

# Every text below is an English message id (N_ marks it for extraction), translated when shown.
_WAITING = {
    FlowState.AWAITING_CALLBACK: (
        N_("Waiting for your approval"),
        N_("Approve access on {network}'s page; this page moves on once you have."),
    ),
    FlowState.VERIFYING: (
        N_("Checking your authorization"),
        N_("{app} is confirming with {network} that you granted access. This takes a few seconds."),
    ),
    FlowState.COMPLETING: (
        N_("Connecting"),
        N_("{app} is connecting the accounts you chose. This takes a few seconds."),
    ),
}
_FAILURES = {
    "authorization_denied": N_("You denied access, so nothing was connected."),
    "token_invalid": N_("{network} did not accept the authorization, so nothing was connected."),
    "invalid_selection": N_("Oktopost refused the selection, so nothing was connected."),
    "upstream_mismatch": N_("{network} answered for another kind of account than the one asked for."),
    "unauthorized": N_(
        "{app} is not allowed to connect accounts right now. Please tell the application's team."
    ),
}
_FAILED = N_("The connection could not be made. Please try again later.")
_EXPIRED = N_("The authorization expired before the connection was made: this took too long.")
# what is connected, in each kind's own words: languages inflect them differently
_KIND = {"profile": N_("profile"), "page": N_("page"), "group": N_("group")}
_CHOOSE = {
    "profile": N_("Choose the profiles to connect"),
    "page": N_("Choose the pages to connect"),
    "group": N_("Choose the groups to connect"),
}
_CONNECTED = {
    "profile": N_("{app} connected these {network} profiles:"),
    "page": N_("{app} connected these {network} pages:"),
    "group": N_("{app} connected these {network} groups:"),
}


@cache
def _templates(language: str) -> Environment:
    """The templates in one language: an environment each, so no request changes another's words."""
    environment = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.i18n"],
    )
    environment.policies["ext.i18n.trimmed"] = True  # as api_shim/locales/babel.cfg extracts them
    environment.install_gettext_translations(  # type: ignore[attr-defined]  # added by the extension
        languages.translations(language), newstyle=True
    )
    return environment


def static_files() -> StaticFiles:
    return StaticFiles(directory=_HERE / "static")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a finished flow ended, in the words of the page and of return_url's `status`."""

    status: str  # completed | failed | expired | denied
    heading: str
    sentence: str
    connected: list[str]


def flow_page(
    settings: Settings,
    flow: Flow,
    events: list[dict[str, Any]],
    csrf: str,
    language: str,
    *,
    status_code: int = 200,
    notice: str | None = None,
) -> HTMLResponse:
    """The page of the flow's current stage; `notice` (a message id) says why a submission was not taken."""
    if flow.state is FlowState.AWAITING_SELECTION:
        return selection_page(settings, flow, csrf, language, status_code=status_code, notice=notice)
    say = _speaker(language, settings, flow)
    context = _common(settings, flow, language) | {"notice": say(notice), "message": None}
    if flow.state.terminal:
        outcome = _outcome(flow, events, say)
        continue_url = (
            return_url_with(flow.return_url, flow.flow_id, outcome.status, flow.caller_state)
            if flow.return_url
            else None
        )
        context |= {
            "outcome": outcome,
            "continue_url": continue_url,
            "continue_seconds": CONTINUE_SECONDS,
            # a popup's result page hands the outcome to the partner's page that opened it, at this origin
            "opener_origin": _origin(flow.return_url) if flow.ui is BrowserUI.POPUP else None,
        }
        return _render("terminal.html", context, outcome.heading, status_code)
    heading, sentence = _WAITING[flow.state]
    context |= {"sentence": say(sentence), "check_again_seconds": CHECK_AGAIN_SECONDS}
    return _render("waiting.html", context, say(heading), status_code)


def selection_page(
    settings: Settings,
    flow: Flow,
    csrf: str,
    language: str,
    *,
    status_code: int = 200,
    notice: str | None = None,
    message: str | None = None,
) -> HTMLResponse:
    """The form that picks the entities to connect; `message` (a message id) says what was wrong with a
    submission."""
    base = origin_of(settings.public_base_url)
    entities = [
        {
            "id": str(entity["id"]),
            "name": entity.get("name") or str(entity["id"]),
            "username": entity.get("network_username") or None,
            "image": _own_image(entity.get("image_link"), base),
            "connected": bool(entity.get("is_connected")),
        }
        for entity in flow.entities
    ]
    say = _speaker(language, settings, flow)
    context = _common(settings, flow, language) | {
        "entities": entities,
        "csrf": csrf,
        "notice": say(notice),
        "message": say(message),
    }
    heading = say(_CHOOSE.get(flow.entity_type, _CHOOSE["profile"]))
    return _render("selection.html", context, heading, status_code)


def status_page(settings: Settings, flow: Flow, *, denied: bool, language: str) -> HTMLResponse:
    """What a redirect flow without a return_url shows its browser after the callback: being connected (or
    the denial), that the window can close, and the flow's id to quote."""
    say = _speaker(language, settings, flow)
    heading, sentence = (
        (N_("Access denied"), _FAILURES["authorization_denied"]) if denied else _WAITING[FlowState.VERIFYING]
    )
    context = _common(settings, flow, language) | {
        "status": (FlowState.FAILED if denied else FlowState.VERIFYING).value,
        "sentence": say(sentence),
    }
    return _render("status.html", context, say(heading), 200)


def forbidden_page(settings: Settings, language: str) -> HTMLResponse:
    """For a browser without the flow's cookie: nothing about the flow, not even its network or tenant."""
    heading = languages.translations(language).gettext(N_("This page is not yours to open"))
    return _render("forbidden.html", _plain(settings, language, DEFAULT_TENANT), heading, 403)


def confirm_page(
    settings: Settings, flow: Flow, csrf: str, token: str | None, error: str, language: str
) -> HTMLResponse:
    """For a callback from a browser that did not open the flow's start_url: what it would connect, and
    a form that claims the flow (or, without a token, ends it) only when the user presses its button."""
    context = _common(settings, flow, language) | {
        "reference": flow.reference,
        "csrf": csrf,
        "token": token,
        "error": error,
    }
    heading = languages.translations(language).gettext(N_("Confirm this connection"))
    page = _render("confirm.html", context, heading, 200)
    back = _origin(flow.return_url) if flow.ui is BrowserUI.REDIRECT else None
    if back is not None:  # its form's answer sends the browser straight back there
        page.headers["Content-Security-Policy"] = html_policy(back)
    return page


def not_found_page(settings: Settings, language: str) -> HTMLResponse:
    heading = languages.translations(language).gettext(N_("No such connection"))
    return _render("not_found.html", _plain(settings, language, DEFAULT_TENANT), heading, 404)


def brand_stylesheet(brand: Brand) -> str:
    """The accent of a tenant's pages, on buttons and links: its colour, a darker shade of it for hover,
    and for links in the dark scheme the tint of it that is readable there."""
    color = brand.color or DEFAULT_ACCENT
    red, green, blue = (int(color[index : index + 2], 16) * 85 // 100 for index in (1, 3, 5))
    return (
        f":root {{ --accent: {color}; --accent-hover: #{red:02x}{green:02x}{blue:02x}; --link: {color}; }}\n"
        "@media (prefers-color-scheme: dark) {"
        f" :root {{ --link: {tint_readable_on(color, DARK_CARD)}; }} }}\n"
    )


def _plain(settings: Settings, language: str, tenant: str) -> dict[str, Any]:
    brand = settings.brand(tenant)
    return {
        "app_name": brand.name or settings.hosted_ui_app_name,
        "brand_css": f"{BRAND_PATH}/{tenant}.css" if brand.color else None,
        "logo_url": f"{BRAND_PATH}/{tenant}/logo" if brand.logo else None,
        "support_url": brand.support_url,
        "static": STATIC_PATH,
        "language": language,
    }


def _common(settings: Settings, flow: Flow, language: str) -> dict[str, Any]:
    kind = languages.translations(language).gettext(_KIND.get(flow.entity_type, flow.entity_type))
    return _plain(settings, language, flow.tenant) | {
        "flow_id": flow.flow_id,
        "status": flow.state.value,
        "network": flow.network,
        "kind": kind,
        "page_url": f"/connect/{flow.flow_id}",  # what the page's script fetches again, wherever it is shown
        "events_url": None if flow.state.terminal else f"/connect/{flow.flow_id}/events",
        "seq": flow.seq,
        "reconnection": flow.reconnects is not None,
    }


class _Speaker:
    """Says a message id in the page's language, with the flow's words filled in."""

    def __init__(self, language: str, words: dict[str, str]) -> None:
        self._gettext = languages.translations(language).gettext
        self._words = words

    def __call__(self, message: str | None) -> str | None:
        return None if message is None else self.text(message)

    def text(self, message: str) -> str:
        return self._gettext(message).format(**self._words)


def _speaker(language: str, settings: Settings, flow: Flow) -> _Speaker:
    app = settings.brand(flow.tenant).name or settings.hosted_ui_app_name
    return _Speaker(language, {"app": app, "network": flow.network})


def _render(template: str, context: dict[str, Any], heading: str | None, status_code: int) -> HTMLResponse:
    templates = _templates(context["language"])
    html = templates.get_template(template).render(context | {"heading": heading})
    return HTMLResponse(html, status_code=status_code)


def _outcome(flow: Flow, events: list[dict[str, Any]], say: _Speaker) -> Outcome:
    terminal = next((event for event in reversed(events) if event["type"] in TERMINAL_TYPES), None)
    data: dict[str, Any] = terminal["data"] if terminal else {}
    if flow.state is FlowState.COMPLETED:
        names = [
            str(item.get("display_name") or item.get("name") or item["id"])
            for item in data.get("credentials", [])
        ]
        sentence = say.text(_CONNECTED.get(flow.entity_type, _CONNECTED["profile"]))
        return Outcome("completed", say.text(N_("Connected")), sentence, names)
    if flow.state is FlowState.EXPIRED:
        return Outcome("expired", say.text(N_("Authorization expired")), say.text(_EXPIRED), [])
    code = str(data.get("code", ""))
    sentence = say.text(_FAILURES.get(code, _FAILED))
    if code == "authorization_denied":
        return Outcome("denied", say.text(N_("Access denied")), sentence, [])
    return Outcome("failed", say.text(N_("The connection failed")), sentence, [])


def _origin(url: str | None) -> str | None:
    """scheme://host[:port] of a URL, as postMessage's target origin names it."""
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"  # an IPv6 host keeps its brackets


def _own_image(link: object, base: tuple[str, str, int]) -> str | None:
    """The entity's image when the shim serves it itself: the page loads nothing from another origin."""
    if not isinstance(link, str) or not link:
        return None
    if "\\" in link or not link.isprintable():
        return None  # a browser reads "/\host" as "//host" (another origin) and drops tabs
    if link.startswith("/") and not link.startswith("//"):
        return link
    try:
        return link if origin_of(link) == base else None
    except ValueError:
        return None
