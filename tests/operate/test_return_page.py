"""The partner's return page as the demo plays it: a returning browser is let in for its own session's
flow only, so a flow started for one user and completed by another is noticed (login CSRF)."""

from __future__ import annotations

import httpx

from cli.return_page import returning_flow_id, session_owns_flow

SHIM = "http://shim.test"
HEADERS = {"Authorization": "Bearer partner-caller-key-0123456789"}
FLOWS = {"flow-of-alice": "alice", "flow-of-bob": "bob"}


def fake_shim(request: httpx.Request) -> httpx.Response:
    flow_id = request.url.path.rsplit("/", 1)[-1]
    if request.headers.get("authorization") != HEADERS["Authorization"] or flow_id not in FLOWS:
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no such flow"}})
    return httpx.Response(200, json={"flow_id": flow_id, "status": "verifying", "reference": FLOWS[flow_id]})


def owns(flow_id: str, session_user: str) -> bool:
    with httpx.Client(transport=httpx.MockTransport(fake_shim)) as http:
        return session_owns_flow(http, SHIM, HEADERS, flow_id, session_user)


def test_the_return_page_lets_in_the_user_the_flow_was_started_for() -> None:
    assert owns("flow-of-alice", "alice")


def test_the_return_page_refuses_a_flow_started_for_another_user() -> None:
    """Alice sent Bob the redirect_url of her flow: Bob's browser comes back with it."""
    assert not owns("flow-of-alice", "bob")


def test_the_return_page_refuses_an_unknown_flow() -> None:
    assert not owns("flow-of-nobody", "alice")


def test_the_flow_id_is_read_from_the_return_url() -> None:
    assert returning_flow_id("https://app.example/done?flow_id=abc&status=processing") == "abc"
    assert returning_flow_id("https://app.example/done?status=processing") == ""
