"""The whole hosted journey in a real browser: from the sandbox's consent page through the shim's
/connect pages to the partner's return_url, with no UI of the partner's own."""

from __future__ import annotations

import re
import time

import pytest

from tests.support.journey import Browsing, HostedStack

pytestmark = [pytest.mark.integration, pytest.mark.browser]

FOLLOWS_WITHIN_S = 3.5  # the page promises 3 s; half a second for loading the partner's page here


@pytest.mark.alone  # FOLLOWS_WITHIN_S
def test_profile_flow_goes_from_consent_to_the_partner_as_completed(
    stack: HostedStack, browsing: Browsing
) -> None:
    flow = stack.start_flow("LinkedIn")
    browsing.consent(flow)

    result = browsing.shown("completed")
    shown_at = time.monotonic()
    event = stack.terminal_event(flow["flow_id"])
    assert event["type"] == "connection.completed"
    credential = event["data"]["credentials"][0]
    # the page names the account as Oktopost displays it (DisplayName), else by its name
    assert (credential.get("display_name") or credential["name"]) in result["text"]
    assert "LinkedIn" in result["body"]
    assert "oktopost-connect" in result["body"]  # the app's name, HOSTED_UI_APP_NAME's default

    arrived = browsing.lands_at_partner(stack.partner)
    assert time.monotonic() - shown_at < FOLLOWS_WITHIN_S, "the page leads on to return_url by itself"
    assert arrived == {"partner": ["acme"], "flow_id": [flow["flow_id"]], "status": ["completed"]}
    assert browsing.page.url == result["continue_href"]


def test_page_flow_is_picked_on_the_hosted_page_and_lands_at_the_partner(
    stack: HostedStack, browsing: Browsing
) -> None:
    flow = stack.start_flow("Facebook", "page")
    browsing.consent(flow)
    selection = browsing.shown("awaiting_selection")
    assert selection["form"]
    page = browsing.page
    for name in ("Acme Inc", "Acme Products", "Acme Careers", "Acme Support"):
        assert name in selection["text"]
    assert page.get_by_label("Acme Inc").is_disabled(), "an entity already connected cannot be picked again"

    page.get_by_label("Acme Products").check()
    page.get_by_label("Acme Support").check()
    page.get_by_role("button", name="Connect").click()

    result = browsing.shown("completed")
    assert "Acme Products" in result["text"]
    assert "Acme Support" in result["text"]
    assert "Acme Careers" not in result["text"]
    arrived = browsing.lands_at_partner(stack.partner)
    assert arrived == {"partner": ["acme"], "flow_id": [flow["flow_id"]], "status": ["completed"]}

    event = stack.terminal_event(flow["flow_id"])
    connected = {credential["name"] for credential in event["data"]["credentials"]}
    assert connected == {"Acme Products", "Acme Support"}
    upstream = {connection["Id"] for connection in stack.sandbox.connections()}
    assert {credential["id"] for credential in event["data"]["credentials"]} <= upstream


def test_denied_consent_shows_the_denial_and_returns_to_the_partner_as_denied(
    stack: HostedStack, browsing: Browsing
) -> None:
    flow = stack.start_flow("Twitter")
    browsing.consent(flow, decision="Deny")

    denial = browsing.shown("failed")
    assert re.search(r"denied|declined|not grant", denial["text"], re.IGNORECASE), "it says why, plainly"
    assert not denial["form"]
    arrived = browsing.lands_at_partner(stack.partner)
    assert arrived == {"partner": ["acme"], "flow_id": [flow["flow_id"]], "status": ["denied"]}

    event = stack.terminal_event(flow["flow_id"])
    assert (event["type"], event["data"]["code"]) == ("authorization.failed", "authorization_denied")
