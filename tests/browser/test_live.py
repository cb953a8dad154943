"""The page keeps up with the flow by itself: while the upstream is slow it says what is happening and
moves to the next stage without a reload, and it shows an expiry that happens while it is open."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.support.journey import Browsing, HostedStack, start_hosted_stack
from tests.support.stack import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.browser]

UPSTREAM_LATENCY_MS = 1500  # long enough that the page shows each waiting stage before it ends
FLOW_TTL_SECONDS = 6  # the whole flow, consent and verification included, must fit well inside


@pytest.fixture(scope="module")
def short_lived(redis_server: RedisServer) -> Iterator[HostedStack]:
    """Flows that expire seconds after they start."""
    with ExitStack() as resources:
        yield start_hosted_stack(
            redis_server, resources, flow_ttl_seconds=FLOW_TTL_SECONDS, token_ttl_seconds=FLOW_TTL_SECONDS
        )


def test_page_moves_through_slow_stages_without_a_reload(stack: HostedStack, browsing: Browsing) -> None:
    flow = stack.start_flow("YouTube", "page")
    stack.sandbox.set_faults(latency_ms=UPSTREAM_LATENCY_MS)
    try:
        see_slow_stages_without_a_reload(browsing, flow)
    finally:
        stack.sandbox.set_faults(latency_ms=0)


def see_slow_stages_without_a_reload(browsing: Browsing, flow: dict[str, Any]) -> None:
    browsing.consent(flow)
    loaded = len(browsing.navigations)

    selection = browsing.shown("awaiting_selection")
    assert selection["seen"][0] == "verifying", "the page first says the account is being checked"
    assert len(browsing.navigations) == loaded, "the page changed stage without a reload"

    page = browsing.page
    page.get_by_label("Acme Careers").check()
    with page.expect_navigation():
        page.get_by_role("button", name="Connect").click()
    submitted = len(browsing.navigations)

    result = browsing.shown("completed")
    assert result["seen"][0] == "completing", "after the selection the page says it is connecting"
    assert "Acme Careers" in result["text"]
    assert len(browsing.navigations) == submitted, "the page changed stage without a reload"


def test_expiry_while_the_page_is_open_is_shown_and_reported_to_the_partner(
    short_lived: HostedStack, browsing: Browsing
) -> None:
    flow = short_lived.start_flow("Instagram", "group")
    browsing.consent(flow)
    browsing.shown("awaiting_selection")
    loaded = len(browsing.navigations)

    expired = browsing.shown("expired", timeout_ms=(FLOW_TTL_SECONDS + 10) * 1000)
    assert len(browsing.navigations) == loaded, "the expiry reached the open page without a reload"
    assert re.search(r"expired|ran out|too long", expired["text"], re.IGNORECASE), "it says why, plainly"
    assert not expired["form"], "nothing left to pick once the flow has expired"

    arrived = browsing.lands_at_partner(short_lived.partner)
    assert arrived == {"partner": ["acme"], "flow_id": [flow["flow_id"]], "status": ["expired"]}


def test_a_page_refused_its_event_stream_still_follows_the_flow(
    stack: HostedStack, browsing: Browsing
) -> None:
    flow = stack.start_flow("LinkedIn", "page")
    browsing.consent(flow)
    browsing.shown("awaiting_selection")  # this tab holds one of the flow's streams
    events_url = f"{stack.shim_origin}/connect/{flow['flow_id']}/events"
    cookies = {c["name"]: c["value"] for c in browsing.page.context.cookies(events_url)}
    with ExitStack() as held, httpx.Client(cookies=cookies, timeout=10) as client:
        for _ in range(4):  # the rest of the flow's five (SSE_MAX_PER_FLOW)
            stream = held.enter_context(client.stream("GET", events_url))
            assert stream.status_code == 200
        late = Browsing(browsing.page.context.new_page())
        with late.page.expect_response(lambda r: r.url == events_url) as refused:
            late.page.goto(f"{stack.shim_origin}/connect/{flow['flow_id']}")
        assert refused.value.status == 429
        late.shown("awaiting_selection")
        loaded = len(late.navigations)

        assert stack.caller_selects(flow["flow_id"], browsing.offered_ids()[:1]).status_code == 202
        late.shown("completed")  # it looked again by itself
        assert len(late.navigations) == loaded, "without a reload"
