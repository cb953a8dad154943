"""Server-sent events of a flow: GET /v1/authorizations/{flow_id}/events for callers (Bearer key) and
GET /connect/{flow_id}/events for the browser the hosted flow is bound to (its cookie)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.support.browsers import came_back
from tests.support.shim import CALLER, OFFERS, Shim, new_flow_id, new_token
from worker.flows.flow import Flow

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


def _messages(body: str) -> list[dict[str, str]]:
    """The stream's messages as field -> value, comments (pings) left out."""
    messages = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if fields:
            messages.append(fields)
    return messages


def _finished_flow(shim: Shim) -> Flow:
    """A flow with five events: started, callback, selection required and submitted, completed."""
    flow = shim.flow_awaiting_selection()
    assert shim.store.submit_selection(flow, [OFFERS[0].id]).done
    return shim.complete(flow, ["Page 0"])


async def _stream(client: httpx.AsyncClient, url: str, **headers: str) -> httpx.Response:
    return await client.get(url, headers=headers)


async def test_a_finished_flows_stream_holds_every_event_and_ends(shim: Shim) -> None:
    flow = _finished_flow(shim)
    answer = await _stream(shim.http, f"/v1/authorizations/{flow.flow_id}/events", **CALLER)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    stored = shim.store.events(flow.flow_id)
    messages = _messages(answer.text)
    assert [(m["id"], m["event"]) for m in messages] == [(str(e["seq"]), e["type"]) for e in stored]
    assert [json.loads(m["data"]) for m in messages] == stored


async def test_last_event_id_sends_only_later_events(shim: Shim) -> None:
    flow = _finished_flow(shim)
    url = f"/v1/authorizations/{flow.flow_id}/events"
    later = _messages((await _stream(shim.http, url, **CALLER, **{"Last-Event-ID": "3"})).text)
    assert [m["id"] for m in later] == ["4", "5"]
    assert later[-1]["event"] == "connection.completed"
    for seen in ("5", "12345678901", "99999999999999999999", "9" * 400):  # past every seq: nothing again
        nothing = _messages((await _stream(shim.http, url, **CALLER, **{"Last-Event-ID": seen})).text)
        assert nothing == [], seen


@pytest.mark.parametrize("seen", [b"\xb2", b"\xd9\xa3", b"-1", b"3x"])
async def test_a_last_event_id_that_is_no_seq_sends_every_event(shim: Shim, seen: bytes) -> None:
    flow = _finished_flow(shim)
    url = f"/v1/authorizations/{flow.flow_id}/events"
    headers = [(name.encode(), value.encode()) for name, value in CALLER.items()]
    answer = await shim.http.get(url, headers=[*headers, (b"Last-Event-ID", seen)])
    assert answer.status_code == 200
    assert [m["id"] for m in _messages(answer.text)] == ["1", "2", "3", "4", "5"]


async def test_live_events_follow_the_stored_ones_until_the_terminal_event(shim: Shim) -> None:
    flow = shim.new_flow()
    streaming = asyncio.create_task(_stream(shim.http, f"/v1/authorizations/{flow.flow_id}/events", **CALLER))
    await asyncio.sleep(0.2)  # the stream is open and has sent the stored event
    assert shim.store.claim_callback(flow, new_token()).done
    offered = shim.offer(shim.flow(flow.flow_id), OFFERS)
    assert shim.store.give_up(offered, owner="").done
    answer = await asyncio.wait_for(streaming, 10)
    events = [m["event"] for m in _messages(answer.text)]
    assert events == [
        "authorization.started",
        "callback.received",
        "selection.required",
        "authorization.expired",
    ]


async def test_a_callers_stream_needs_a_key_and_a_known_flow(shim: Shim) -> None:
    flow = shim.new_flow()
    assert (await _stream(shim.http, f"/v1/authorizations/{flow.flow_id}/events")).status_code == 401
    unknown = await _stream(shim.http, f"/v1/authorizations/{new_flow_id()}/events", **CALLER)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "flow_not_found"


async def test_the_page_stream_is_the_same_for_the_browser_with_the_cookie(shim: Shim) -> None:
    flow = shim.new_flow()
    await came_back(shim, flow)
    assert shim.store.give_up(shim.flow(flow.flow_id), owner="").done
    for_page = await _stream(shim.http, f"/connect/{flow.flow_id}/events")
    for_caller = await _stream(shim.http, f"/v1/authorizations/{flow.flow_id}/events", **CALLER)
    assert for_page.status_code == 200
    assert for_page.headers["content-type"].startswith("text/event-stream")
    page_events: list[dict[str, Any]] = _messages(for_page.text)
    assert page_events == _messages(for_caller.text)
    assert page_events[-1]["event"] == "authorization.expired"


async def test_the_page_stream_refuses_other_browsers_and_unknown_flows(shim: Shim) -> None:
    flow = shim.new_flow()
    await came_back(shim, flow)
    async with shim.another_browser() as other:
        assert (await _stream(other, f"/connect/{flow.flow_id}/events")).status_code == 403
        assert (await _stream(other, f"/connect/{new_flow_id()}/events")).status_code == 404
