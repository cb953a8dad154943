"""The callers' routes: start a flow, read its status, submit its selection."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest

from api_shim.rules import SELECTION_LEAST_SECONDS
from tests.support.shim import CALLER, OFFERS, PREFIX, REDIRECT_URL, RETURN_URL, SHIM_URL, Shim, open_shim
from worker.flows.flow import FlowState

pytestmark = pytest.mark.anyio

START = {"network": "facebook", "type": "page", "return_url": RETURN_URL, "reference": "crm-42"}


def _error_code(answer: httpx.Response) -> str:
    code: str = answer.json()["error"]["code"]
    return code


# --- POST /v1/authorizations -----------------------------------------------------------------------------


async def test_start_creates_a_flow_and_answers_where_to_send_the_browser(shim: Shim) -> None:
    answer = await shim.http.post("/v1/authorizations", json=START, headers=CALLER)
    assert answer.status_code == 201
    created = answer.json()
    flow_id = created["flow_id"]
    assert re.fullmatch(r"[0-9a-f]{40}", flow_id)
    assert created == {
        "flow_id": flow_id,
        "redirect_url": REDIRECT_URL,
        "start_url": f"{SHIM_URL}/v1/start/{flow_id}",
        "channel": f"{PREFIX}:flow:{flow_id}",
        "status_url": f"{SHIM_URL}/v1/authorizations/{flow_id}",
        "expires_at": created["expires_at"],
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", created["expires_at"])
    flow = shim.flow(flow_id)
    assert (flow.state, flow.network, flow.entity_type) == (FlowState.AWAITING_CALLBACK, "Facebook", "page")
    assert (flow.return_url, flow.reference) == (RETURN_URL, "crm-42")
    assert shim.oktopost.form() == {
        "network": "Facebook",
        "url": f"{SHIM_URL}/v1/callback/{flow_id}",
        "type": "page",
    }
    assert shim.event_types(flow_id) == ["authorization.started"]


async def test_a_selection_too_close_to_the_deadline_for_its_completion_to_call_is_410(shim: Shim) -> None:
    late, in_time = shim.flow_awaiting_selection(), shim.flow_awaiting_selection()
    now = shim.store.clock.now()
    for flow, left in ((late, SELECTION_LEAST_SECONDS - 0.2), (in_time, SELECTION_LEAST_SECONDS + 2)):
        shim.store.redis.hset(shim.store.names.flow_state(flow.flow_id), "deadline", repr(now + left))
    answer = await shim.http.post(
        f"/v1/authorizations/{late.flow_id}/selection", json={"ids": [OFFERS[0].id]}, headers=CALLER
    )
    assert answer.status_code == 410
    assert _error_code(answer) == "token_expired"
    assert shim.enqueuer.enqueued == []
    assert shim.flow(late.flow_id).state is FlowState.AWAITING_SELECTION
    answer = await shim.http.post(
        f"/v1/authorizations/{in_time.flow_id}/selection", json={"ids": [OFFERS[0].id]}, headers=CALLER
    )
    assert answer.status_code == 202, answer.text


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"network": "MySpace"}, "invalid_request"),
        ({"network": "LinkedIn", "type": "company"}, "invalid_request"),
        ({"type": "page"}, "invalid_request"),
        ({"network": "LinkedIn", "return_url": "https://evil.example/done"}, "return_url_not_allowed"),
        ({"network": "LinkedIn", "return_url": "http://app.example/done"}, "return_url_not_allowed"),
    ],
)
async def test_start_refuses_bad_input_with_422_before_calling_oktopost(
    shim: Shim, body: dict[str, Any], code: str
) -> None:
    answer = await shim.http.post("/v1/authorizations", json=body, headers=CALLER)
    assert answer.status_code == 422
    assert _error_code(answer) == code
    assert shim.oktopost.requests == []


@pytest.mark.parametrize(
    ("refusal", "status", "code"),
    [
        (
            httpx.Response(200, json={"Result": False, "Errors": ["network is not enabled"]}),
            422,
            "upstream_rejected",
        ),
        (httpx.Response(400, json={"Result": False, "Errors": ["bad url"]}), 422, "upstream_rejected"),
        (httpx.Response(401, json={"Result": False, "Errors": ["bad key"]}), 502, "unauthorized"),
    ],
)
async def test_start_passes_on_an_oktopost_refusal_and_creates_no_flow(
    shim: Shim, refusal: httpx.Response, status: int, code: str
) -> None:
    shim.oktopost.refusal = refusal
    answer = await shim.http.post("/v1/authorizations", json=START, headers=CALLER)
    assert answer.status_code == status
    assert _error_code(answer) == code
    assert len(shim.oktopost.requests) == 1  # a refusal is not retried
    assert list(shim.store.redis.scan_iter(f"{PREFIX}:flow:*")) == []


async def test_start_is_refused_with_503_while_flows_under_way_hold_the_budget() -> None:
    async with open_shim(rate=(1, 3600.0)) as shim:  # one Oktopost call an hour
        shim.budget.acquire(priority=time.time() + 60, give_up_at=time.time() + 1, hold=5)  # a verification
        answer = await shim.http.post("/v1/authorizations", json=START, headers=CALLER)
        assert answer.status_code == 503
        assert _error_code(answer) == "upstream_budget_exhausted"
        assert int(answer.headers["retry-after"]) >= 1
        assert shim.oktopost.requests == []
        assert list(shim.store.redis.scan_iter(f"{PREFIX}:flow:*")) == []


# --- GET /v1/authorizations/{flow_id} ----------------------------------------------------------------------


async def test_status_shows_the_flow_and_its_events(shim: Shim) -> None:
    flow = shim.new_flow()
    answer = await shim.http.get(f"/v1/authorizations/{flow.flow_id}", headers=CALLER)
    assert answer.status_code == 200
    status = answer.json()
    assert {key: status[key] for key in ("flow_id", "status", "network", "type", "reference")} == {
        "flow_id": flow.flow_id,
        "status": "awaiting_callback",
        "network": "Facebook",
        "type": "page",
        "reference": "crm-42",
    }
    assert [event["type"] for event in status["events"]] == ["authorization.started"]


async def test_status_of_no_such_flow_is_404(shim: Shim) -> None:
    answer = await shim.http.get("/v1/authorizations/" + "0" * 40, headers=CALLER)
    assert answer.status_code == 404
    assert _error_code(answer) == "flow_not_found"


@pytest.mark.parametrize("path", ["/v1/authorizations/..%2f", "/v1/authorizations/", "/v1/webhooks/"])
async def test_a_path_that_names_no_route_is_404_not_a_redirect_to_a_guess(shim: Shim, path: str) -> None:
    answer = await shim.http.get(path, headers=CALLER)
    assert answer.status_code == 404, (answer.status_code, answer.headers.get("location"))
    assert "location" not in answer.headers


# --- POST /v1/authorizations/{flow_id}/selection ---------------------------------------------------------


async def test_a_selection_is_accepted_and_queues_the_completion(shim: Shim) -> None:
    flow = shim.flow_awaiting_selection()
    ids = [OFFERS[2].id, OFFERS[0].id, OFFERS[2].id]
    answer = await shim.http.post(
        f"/v1/authorizations/{flow.flow_id}/selection", json={"ids": ids}, headers=CALLER
    )
    assert answer.status_code == 202
    assert answer.json() == {
        "flow_id": flow.flow_id,
        "status": "completing",
        "ids": [OFFERS[2].id, OFFERS[0].id],
    }
    assert shim.flow(flow.flow_id).selected_ids == [OFFERS[2].id, OFFERS[0].id]
    assert shim.enqueuer.enqueued[-1] == (flow.flow_id, FlowState.COMPLETING)
    assert shim.event_types(flow.flow_id)[-1] == "selection.submitted"


async def test_a_second_selection_is_a_conflict_and_queues_nothing_more(shim: Shim) -> None:
    flow = shim.flow_awaiting_selection()
    path = f"/v1/authorizations/{flow.flow_id}/selection"
    await shim.http.post(path, json={"ids": [OFFERS[0].id]}, headers=CALLER)
    again = await shim.http.post(path, json={"ids": [OFFERS[1].id]}, headers=CALLER)
    assert again.status_code == 409
    assert _error_code(again) == "wrong_state"
    assert shim.enqueuer.enqueued == [(flow.flow_id, FlowState.COMPLETING)]


async def test_a_selection_before_the_flow_offers_one_is_409(shim: Shim) -> None:
    flow = shim.new_flow()
    answer = await shim.http.post(
        f"/v1/authorizations/{flow.flow_id}/selection", json={"ids": [OFFERS[0].id]}, headers=CALLER
    )
    assert answer.status_code == 409
    assert _error_code(answer) == "wrong_state"
    assert shim.flow(flow.flow_id) == flow


async def test_a_selection_for_an_expired_flow_is_410(shim: Shim) -> None:
    flow = shim.flow_awaiting_selection()
    assert shim.store.give_up(flow, "verifying-task").done
    answer = await shim.http.post(
        f"/v1/authorizations/{flow.flow_id}/selection", json={"ids": [OFFERS[0].id]}, headers=CALLER
    )
    assert answer.status_code == 410
    assert _error_code(answer) == "flow_expired"
    assert shim.enqueuer.enqueued == []


async def test_a_selection_after_the_token_ran_out_is_410(shim: Shim) -> None:
    flow = shim.flow_awaiting_selection()
    shim.store.redis.delete(shim.store.names.flow_token(flow.flow_id))  # as its time to live would
    answer = await shim.http.post(
        f"/v1/authorizations/{flow.flow_id}/selection", json={"ids": [OFFERS[0].id]}, headers=CALLER
    )
    assert answer.status_code == 410
    assert _error_code(answer) == "token_expired"
    assert shim.flow(flow.flow_id).state is FlowState.AWAITING_SELECTION


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"ids": ["99999"]}, "invalid_selection"),
        ({"ids": [OFFERS[0].id, "99999"]}, "invalid_selection"),
        ({"ids": []}, "invalid_request"),
        ({"ids": "10795420"}, "invalid_request"),
        ({}, "invalid_request"),
    ],
)
async def test_a_selection_of_ids_not_offered_is_422(shim: Shim, body: dict[str, Any], code: str) -> None:
    flow = shim.flow_awaiting_selection()
    answer = await shim.http.post(f"/v1/authorizations/{flow.flow_id}/selection", json=body, headers=CALLER)
    assert answer.status_code == 422
    assert _error_code(answer) == code
    assert shim.flow(flow.flow_id) == flow
    assert shim.enqueuer.enqueued == []


# --- Bearer keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": CALLER["Authorization"].replace("Bearer", "Basic")},
    ],
)
async def test_the_callers_routes_need_a_bearer_key(shim: Shim, headers: dict[str, str]) -> None:
    flow = shim.flow_awaiting_selection()
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/authorizations", {"json": START}),
        ("GET", f"/v1/authorizations/{flow.flow_id}", {}),
        ("GET", "/v1/authorizations/" + "0" * 40, {}),
        ("POST", f"/v1/authorizations/{flow.flow_id}/selection", {"json": {"ids": [OFFERS[0].id]}}),
    ]
    for method, path, options in requests:
        answer = await shim.http.request(method, path, headers=headers, **options)
        assert answer.status_code == 401, (method, path)
        assert _error_code(answer) == "unauthorized", (method, path)
        assert answer.headers["www-authenticate"] == "Bearer"
    assert shim.oktopost.requests == []
    assert shim.enqueuer.enqueued == []
    assert shim.flow(flow.flow_id) == flow
