"""Driving flows over real HTTP the way a caller service and a user's browser do."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.support.stack import RETURN_URL, Pipeline
from worker.follow.subscribe import follow_flow


def start_flow(
    pipeline: Pipeline,
    network: str = "LinkedIn",
    entity_type: str = "profile",
    return_url: str | None = RETURN_URL,
    reference: str | None = "user-42",
    ui: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"network": network, "type": entity_type}
    if ui is not None:
        body["ui"] = ui
    if return_url is not None:
        body["return_url"] = return_url
    if reference is not None:
        body["reference"] = reference
    response = httpx.post(
        f"{pipeline.shim_url}/v1/authorizations", json=body, headers=pipeline.headers, timeout=15
    )
    assert response.status_code == 201, response.text
    return response.json()


def flow_status(pipeline: Pipeline, flow_id: str) -> dict[str, Any]:
    """The flow as its caller reads it back (GET /v1/authorizations/{flow_id})."""
    answer = httpx.get(f"{pipeline.shim_url}/v1/authorizations/{flow_id}", headers=pipeline.headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


def consent(redirect_url: str, decision: str = "approve") -> str:
    """The user's choice on the (sandbox) network; returns the callback URL the browser is sent to."""
    joiner = "&" if "?" in redirect_url else "?"
    response = httpx.get(f"{redirect_url}{joiner}decision={decision}", follow_redirects=False, timeout=5)
    assert response.status_code == 303, response.text
    return response.headers["location"]


def okt_of(callback_url: str) -> str:
    return parse_qs(urlsplit(callback_url).query)["okt"][0]


def callback(url: str) -> httpx.Response:
    return httpx.get(url, follow_redirects=False, timeout=5)


def events_of(pipeline: Pipeline, flow_id: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Every event of the flow up to its terminal one (fails the test if none comes in time)."""
    events = list(follow_flow(pipeline.redis(), flow_id, pipeline.prefix, timeout=timeout))
    assert events, [e["type"] for e in events]
    assert events[-1]["type"] in (
        "connection.completed",
        "authorization.failed",
        "authorization.expired",
    ), [e["type"] for e in events]
    return events


def wait_for_event(pipeline: Pipeline, flow_id: str, event_type: str, timeout: float = 30) -> dict[str, Any]:
    for event in follow_flow(pipeline.redis(), flow_id, pipeline.prefix, timeout=timeout):
        if event["type"] == event_type:
            return event
    raise AssertionError(f"no {event_type} for flow {flow_id} within {timeout}s")


def select(pipeline: Pipeline, flow_id: str, ids: list[str]) -> httpx.Response:
    return httpx.post(
        f"{pipeline.shim_url}/v1/authorizations/{flow_id}/selection",
        json={"ids": ids},
        headers=pipeline.headers,
        timeout=5,
    )
