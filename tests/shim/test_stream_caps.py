"""Event streams are bounded: SSE_MAX_PER_FLOW per flow and SSE_MAX_PER_KEY per key (429 with
Retry-After past either), each ended after SSE_MAX_SECONDS with a retry hint."""

from __future__ import annotations

import time

import pytest
from starlette.requests import Request

from api_shim.deps import Deps
from api_shim.errors import ApiError
from api_shim.streams import flow_messages
from tests.support.shim import CALLER, PREFIX, Shim, open_shim

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


def _request() -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""})


def _deps(shim: Shim) -> Deps:
    deps: Deps = shim.app.state.deps
    return deps


async def test_past_sse_max_per_flow_a_stream_is_429_with_retry_after_until_one_ends() -> None:
    async with open_shim(sse_max_per_flow=3) as shim:
        flow = shim.new_flow()
        streams = _deps(shim).streams
        opened = [await streams.open(flow.flow_id, f"key-{index}", _request()) for index in range(3)]
        with pytest.raises(ApiError) as refused:
            await streams.open(flow.flow_id, "key-9", _request())
        assert refused.value.status == 429
        assert refused.value.headers == {"Retry-After": "5"}
        other_flow = shim.new_flow()  # another flow is not held up by this one's streams
        await streams.open(other_flow.flow_id, "key-9", _request())
        ending = opened[0].body_iterator  # one stream sends its first event, then its client leaves
        assert (await anext(ending)).event == "authorization.started"  # type: ignore[call-overload]
        await ending.aclose()  # type: ignore[attr-defined]
        await streams.open(flow.flow_id, "key-9", _request())


async def test_past_sse_max_per_key_a_stream_is_429() -> None:
    async with open_shim(sse_max_per_key=2) as shim:
        streams = _deps(shim).streams
        for _ in range(2):
            await streams.open(shim.new_flow().flow_id, "one-key", _request())
        with pytest.raises(ApiError) as refused:
            await streams.open(shim.new_flow().flow_id, "one-key", _request())
        assert refused.value.status == 429
        await streams.open(shim.new_flow().flow_id, "another-key", _request())


async def test_the_callers_route_answers_429_past_the_flows_cap() -> None:
    async with open_shim(sse_max_per_flow=1) as shim:
        flow = shim.new_flow()
        await _deps(shim).streams.open(flow.flow_id, "someone-else", _request())
        answer = await shim.http.get(f"/v1/authorizations/{flow.flow_id}/events", headers=CALLER)
        assert answer.status_code == 429
        assert answer.json()["error"]["code"] == "too_many_streams"
        assert answer.headers["retry-after"] == "5"


async def test_a_stream_ends_after_its_lifetime_with_a_retry_hint(shim: Shim) -> None:
    flow = shim.new_flow()
    started = time.monotonic()
    messages = [
        message async for message in flow_messages(_deps(shim).events_redis, PREFIX, flow.flow_id, 0, 0.5)
    ]
    assert 0.4 < time.monotonic() - started < 3
    assert [message.event for message in messages[:1]] == ["authorization.started"]
    assert messages[-1].retry == 1000
