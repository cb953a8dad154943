"""The hosted connect pages: one template per stage of a flow, rendered for the browser it is bound to.

Templates (Jinja2, autoescaped) are in api_shim/templates/, the stylesheet and the script in
api_shim/static/, served by the shim itself: the pages load nothing from another origin. Every page says
in plain words where the flow is; the routes that serve them are in api_shim/routes/connect.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from api_shim.security import return_url_with
from worker.config.settings import Settings, origin_of
from worker.events import TERMINAL_TYPES
from worker.flows.flow import Flow, FlowState

STATIC_PATH = "/connect/static"
_HERE = Path(__file__).parent
_TEMPLATES = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
REFRESH_SECONDS = 3  # without JavaScript, a waiting page reloads itself this often
CONTINUE_SECONDS = 2  # a finished page shows this long before the browser goes back to return_url

_WAITING = {
    FlowState.AWAITING_CALLBACK: (
        "Waiting for your approval",
        "Approve access on {network}'s page; this page moves on once you have.",
    ),
    FlowState.VERIFYING: (
        "Checking your authorization",
        "{app} is confirming with {network} that you granted access. This takes a few seconds.",
    ),
    FlowState.COMPLETING: (
        "Connecting",
        "{app} is connecting the {kinds} you chose. This takes a few seconds.",
    ),
}
_FAILURES = {
    "authorization_denied": "You denied access, so nothing was connected.",
    "token_invalid": "{network} did not accept the authorization, so nothing was connected.",
    "invalid_selection": "Oktopost refused the selection, so nothing was connected.",
    "upstream_mismatch": "{network} answered for another kind of account than the one asked for.",
    "unauthorized": "{app} is not allowed to connect accounts right now. Please tell the application's team.",
}
_FAILED = "The connection could not be made. Please try again later."
_EXPIRED = "The authorization expired before the connection was made: this took too long."


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
    *,
    status_code: int = 200,
    notice: str | None = None,
) -> HTMLResponse:
    """The page of the flow's current stage; `notice` says why a submission was not taken."""
    if flow.state is FlowState.AWAITING_SELECTION:
        return selection_page(settings, flow, csrf, status_code=status_code, notice=notice)
    words = {"app": settings.hosted_ui_app_name, "network": flow.network, "kinds": f"{flow.entity_type}s"}
    context = _common(settings, flow) | {"notice": notice, "message": None}
    if flow.state.terminal:
        outcome = _outcome(flow, events, words)
        continue_url = (
            return_url_with(flow.return_url, flow.flow_id, outcome.status, flow.caller_state)
            if flow.return_url
            else None
        )
        context |= {"outcome": outcome, "continue_url": continue_url, "continue_seconds": CONTINUE_SECONDS}
        return _render("terminal.html", context, outcome.heading, status_code)
    heading, sentence = _WAITING[flow.state]
    context |= {"sentence": sentence.format(**words), "refresh_seconds": REFRESH_SECONDS}
    return _render("waiting.html", context, heading, status_code)


def selection_page(
    settings: Settings,
    flow: Flow,
    csrf: str,
    *,
    status_code: int = 200,
    notice: str | None = None,
    message: str | None = None,
) -> HTMLResponse:
    """The form that picks the entities to connect; `message` says what was wrong with a submission."""
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
    context = _common(settings, flow) | {
        "entities": entities,
        "csrf": csrf,
        "notice": notice,
        "message": message,
    }
    return _render("selection.html", context, f"Choose the {flow.entity_type}s to connect", status_code)


def forbidden_page(settings: Settings) -> HTMLResponse:
    """For a browser without the flow's cookie: nothing about the flow, not even its network."""
    context = {"app_name": settings.hosted_ui_app_name, "static": STATIC_PATH}
    return _render("forbidden.html", context, "This page is not yours to open", 403)


def confirm_page(settings: Settings, flow: Flow, csrf: str, token: str | None, error: str) -> HTMLResponse:
    """For a callback from a browser that did not open the flow's start_url: what it would connect, and
    a form that claims the flow (or, without a token, ends it) only when the user presses its button."""
    context = {
        "app_name": settings.hosted_ui_app_name,
        "static": STATIC_PATH,
        "flow_id": flow.flow_id,
        "network": flow.network,
        "kind": flow.entity_type,
        "reference": flow.reference,
        "csrf": csrf,
        "token": token,
        "error": error,
    }
    return _render("confirm.html", context, "Confirm this connection", 200)


def not_found_page(settings: Settings) -> HTMLResponse:
    context = {"app_name": settings.hosted_ui_app_name, "static": STATIC_PATH}
    return _render("not_found.html", context, "No such connection", 404)


def _common(settings: Settings, flow: Flow) -> dict[str, Any]:
    return {
        "app_name": settings.hosted_ui_app_name,
        "static": STATIC_PATH,
        "flow_id": flow.flow_id,
        "status": flow.state.value,
        "network": flow.network,
        "kind": flow.entity_type,
        "events_url": None if flow.state.terminal else f"/connect/{flow.flow_id}/events",
        "seq": flow.seq,
        "reconnection": flow.reconnects is not None,
    }


def _render(template: str, context: dict[str, Any], heading: str, status_code: int) -> HTMLResponse:
    html = _TEMPLATES.get_template(template).render(context | {"heading": heading})
    return HTMLResponse(html, status_code=status_code)


def _outcome(flow: Flow, events: list[dict[str, Any]], words: dict[str, str]) -> Outcome:
    terminal = next((event for event in reversed(events) if event["type"] in TERMINAL_TYPES), None)
    data: dict[str, Any] = terminal["data"] if terminal else {}
    if flow.state is FlowState.COMPLETED:
        names = [
            str(item.get("display_name") or item.get("name") or item["id"])
            for item in data.get("credentials", [])
        ]
        sentence = f"{words['app']} connected these {flow.network} accounts:"
        return Outcome("completed", "Connected", sentence, names)
    if flow.state is FlowState.EXPIRED:
        return Outcome("expired", "Authorization expired", _EXPIRED, [])
    code = str(data.get("code", ""))
    sentence = _FAILURES.get(code, _FAILED).format(**words)
    if code == "authorization_denied":
        return Outcome("denied", "Access denied", sentence, [])
    return Outcome("failed", "The connection failed", sentence, [])


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
