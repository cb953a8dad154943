"""The partner's return page, as the demo plays it: the browser that comes back from a flow is let in
only when its session is the user the flow was started for.

Without this check a flow can be completed by the wrong person (login CSRF): someone starts a flow for
their own account in the partner's app and sends its redirect_url to a victim, who authorizes and so
connects the victim's social profile to the sender's account. The flow's `reference` says whose flow it
is; the session of the browser arriving at `return_url?flow_id=...` says who is back.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx


def returning_flow_id(location: str) -> str:
    """The flow id of `return_url?flow_id=...&status=...`; empty when there is none."""
    return parse_qs(urlsplit(location).query).get("flow_id", [""])[0]


def session_owns_flow(
    http: httpx.Client, shim_url: str, headers: dict[str, str], flow_id: str, session_reference: str
) -> bool:
    """The partner's check, server side with its caller key: the flow exists, belongs to this caller, and
    was started for the user of the returning session."""
    answer = http.get(f"{shim_url}/v1/authorizations/{flow_id}", headers=headers)
    return answer.status_code == 200 and answer.json().get("reference") == session_reference
