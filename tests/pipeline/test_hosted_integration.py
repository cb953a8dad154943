"""The hosted journey over real processes: a browser (an HTTP client keeping its cookies) goes from the
consent page through the shim's pages to the end, while a caller follows the flow's server-sent events."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import httpx
import pytest

from tests.support.flows import consent, start_flow
from tests.support.stack import RETURN_URL, Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _stream(client: httpx.Client, url: str, headers: dict[str, str], into: list[dict[str, str]]) -> None:
    """Reads a server-sent event stream to its end, each message as field -> value."""
    message: dict[str, str] = {}
    with client.stream("GET", url, headers=headers, timeout=30) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if not line:
                if message:
                    into.append(message)
                message = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                message[name] = value


def _page_when(browser: httpx.Client, url: str, status: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        page = browser.get(url)
        assert page.status_code == 200, page.text
        if f'data-status="{status}"' in page.text or time.monotonic() > deadline:
            return page.text
        time.sleep(0.1)


def test_a_page_flow_completes_through_the_hosted_pages(pipeline: Pipeline) -> None:
    created = start_flow(pipeline, network="Facebook", entity_type="page")
    flow_id = created["flow_id"]
    caller_events: list[dict[str, str]] = []
    with httpx.Client() as caller, httpx.Client(follow_redirects=False) as browser:
        url = f"{pipeline.shim_url}/v1/authorizations/{flow_id}/events"
        follower = threading.Thread(target=_stream, args=(caller, url, pipeline.headers, caller_events))
        follower.start()

        back = browser.get(consent(created["redirect_url"]))
        page_url = f"{pipeline.shim_url}/connect/{flow_id}"
        assert (back.status_code, back.headers["location"]) == (303, page_url)
        form = _page_when(browser, page_url, "awaiting_selection")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        choices = re.findall(r'name="ids" value="([^"]+)" id="[^"]+">', form)  # not disabled
        assert csrf is not None
        assert len(choices) >= 2
        chosen = browser.post(
            f"{pipeline.shim_url}/connect/{flow_id}/selection",
            data={"ids": choices[:2], "csrf": csrf.group(1)},
        )
        assert (chosen.status_code, chosen.headers["location"]) == (303, page_url)
        finished = _page_when(browser, page_url, "completed")
        assert 'data-status="completed"' in finished
        assert f'href="{RETURN_URL}?flow_id={flow_id}&amp;status=completed"' in finished
        follower.join(30)
        assert not follower.is_alive()

        replayed: list[dict[str, str]] = []
        _stream(browser, f"{page_url}/events", {"Last-Event-ID": "3"}, replayed)

    types = [message["event"] for message in caller_events]
    assert types == [
        "authorization.started",
        "callback.received",
        "selection.required",
        "selection.submitted",
        "connection.completed",
    ]
    assert [message["id"] for message in caller_events] == ["1", "2", "3", "4", "5"]
    submitted: dict[str, Any] = json.loads(caller_events[3]["data"])
    assert submitted["data"]["ids"] == choices[:2]
    assert replayed == caller_events[3:]
