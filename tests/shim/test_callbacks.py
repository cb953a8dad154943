"""GET /v1/callback/{flow_id}: a browser back from Oktopost, with its okt token or without one."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.commands import commands_sent
from tests.support.shim import OTHER_TOKEN, TOKEN, Shim, new_flow_id
from worker.flows.flow import BrowserUI, FlowState

pytestmark = pytest.mark.anyio


def _query_of(location: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(location).query)


async def test_a_callback_claims_its_flow_queues_verification_and_sends_the_browser_back(shim: Shim) -> None:
    flow = shim.new_flow(ui=BrowserUI.REDIRECT)
    answer = await shim.http.get(f"/v1/callback/{flow.flow_id}", params={"okt": TOKEN})
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith("https://app.example/done?")
    assert _query_of(location) == {"tab": ["social"], "flow_id": [flow.flow_id], "status": ["processing"]}
    assert shim.flow(flow.flow_id).state is FlowState.VERIFYING
    assert shim.enqueuer.enqueued == [(flow.flow_id, FlowState.VERIFYING)]
    assert shim.event_types(flow.flow_id)[-1] == "callback.received"


async def test_a_flow_without_return_url_shows_a_page_instead(shim: Shim) -> None:
    flow = shim.new_flow(return_url=None, ui=BrowserUI.REDIRECT)
    answer = await shim.http.get(f"/v1/callback/{flow.flow_id}", params={"okt": TOKEN})
    assert answer.status_code == 200
    assert "location" not in answer.headers
    assert answer.headers["content-type"].startswith("text/html")
    assert '<html lang="en">' in answer.text
    assert '<main data-status="verifying">' in answer.text
    assert "is confirming with Facebook that you granted access" in answer.text
    assert "You can close this window." in answer.text
    assert f"Reference: {flow.flow_id}" in answer.text
    assert shim.flow(flow.flow_id).state is FlowState.VERIFYING


@pytest.mark.parametrize(
    ("okt", "status", "says"),
    [
        (TOKEN, "verifying", "lässt sich von Facebook bestätigen"),
        (None, "failed", "Sie haben den Zugriff abgelehnt"),
    ],
)
async def test_that_page_speaks_the_browsers_language(
    shim: Shim, okt: str | None, status: str, says: str
) -> None:
    flow = shim.new_flow(return_url=None, ui=BrowserUI.REDIRECT)
    answer = await shim.http.get(
        f"/v1/callback/{flow.flow_id}",
        params={"okt": okt} if okt else {},
        headers={"accept-language": "de-DE,de;q=0.9,en;q=0.5"},
    )
    assert answer.status_code == 200
    assert '<html lang="de">' in answer.text
    assert f'<main data-status="{status}">' in answer.text
    assert says in answer.text
    assert "Sie können dieses Fenster schließen." in answer.text


async def test_a_repeated_callback_is_answered_alike_and_enqueues_once(shim: Shim) -> None:
    flow = shim.new_flow(ui=BrowserUI.REDIRECT)
    first = await shim.http.get(f"/v1/callback/{flow.flow_id}", params={"okt": TOKEN})
    again = await shim.http.get(f"/v1/callback/{flow.flow_id}", params={"okt": TOKEN})
    assert first.status_code == again.status_code == 303
    assert first.headers["location"] == again.headers["location"]
    assert shim.enqueuer.enqueued == [(flow.flow_id, FlowState.VERIFYING)]
    assert shim.event_types(flow.flow_id).count("callback.received") == 1


async def test_a_second_token_for_a_claimed_flow_is_a_conflict(shim: Shim) -> None:
    flow = shim.new_flow()
    await shim.http.get(f"/v1/callback/{flow.flow_id}", params={"okt": TOKEN})
    answer = await shim.http.get(f"/v1/callback/{flow.flow_id}", params={"okt": OTHER_TOKEN})
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "flow_already_claimed"
    assert len(shim.enqueuer.enqueued) == 1


async def test_a_token_that_claimed_one_flow_cannot_claim_another(shim: Shim) -> None:
    first, second = shim.new_flow(), shim.new_flow()
    await shim.http.get(f"/v1/callback/{first.flow_id}", params={"okt": TOKEN})
    answer = await shim.http.get(f"/v1/callback/{second.flow_id}", params={"okt": TOKEN})
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "token_already_used"
    assert shim.flow(second.flow_id) == second
    assert shim.enqueuer.enqueued == [(first.flow_id, FlowState.VERIFYING)]


async def test_a_callback_without_token_fails_the_flow_as_denied(shim: Shim) -> None:
    flow = shim.new_flow(ui=BrowserUI.REDIRECT)
    answer = await shim.http.get(f"/v1/callback/{flow.flow_id}", params={"error": "access_denied"})
    assert answer.status_code == 303
    assert _query_of(answer.headers["location"])["status"] == ["denied"]
    assert shim.flow(flow.flow_id).state is FlowState.FAILED
    failed = shim.store.events(flow.flow_id)[-1]
    assert failed["type"] == "authorization.failed"
    assert failed["data"]["code"] == "authorization_denied"
    assert "access_denied" in failed["data"]["message"]
    assert shim.enqueuer.enqueued == []


async def test_a_denial_repeated_is_answered_alike_and_a_denial_cannot_end_a_claimed_flow(shim: Shim) -> None:
    denied, claimed = shim.new_flow(ui=BrowserUI.REDIRECT), shim.new_flow(ui=BrowserUI.REDIRECT)
    await shim.http.get(f"/v1/callback/{denied.flow_id}", params={"error": "access_denied"})
    again = await shim.http.get(f"/v1/callback/{denied.flow_id}")
    assert again.status_code == 303
    assert _query_of(again.headers["location"])["status"] == ["denied"]
    assert shim.event_types(denied.flow_id).count("authorization.failed") == 1

    await shim.http.get(f"/v1/callback/{claimed.flow_id}", params={"okt": TOKEN})
    refused = await shim.http.get(f"/v1/callback/{claimed.flow_id}", params={"error": "access_denied"})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "flow_already_claimed"
    assert shim.flow(claimed.flow_id).state is FlowState.VERIFYING


@pytest.mark.parametrize("flow_id", [new_flow_id(), "not-a-flow", "x" * 80])
async def test_a_callback_for_no_such_flow_is_404(shim: Shim, flow_id: str) -> None:
    answer = await shim.http.get(f"/v1/callback/{flow_id}", params={"okt": TOKEN})
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "flow_not_found"


@pytest.mark.parametrize("query", [{"okt": TOKEN}, {"error": "access_denied"}])
async def test_a_callback_after_the_deadline_expires_the_flow(shim: Shim, query: dict[str, str]) -> None:
    flow = shim.new_flow(age=10_000)  # its deadline passed before the sweeper got to it
    answer = await shim.http.get(f"/v1/callback/{flow.flow_id}", params=query)
    assert answer.status_code == 410
    assert answer.json()["error"]["code"] == "flow_expired"
    assert shim.flow(flow.flow_id).state is FlowState.EXPIRED
    assert shim.event_types(flow.flow_id)[-1] == "authorization.expired"
    assert shim.enqueuer.enqueued == []


async def test_a_callback_for_an_expired_flow_is_410(shim: Shim) -> None:
    flow = shim.new_flow(age=10_000)
    assert shim.store.expire(flow).done
    answer = await shim.http.get(f"/v1/callback/{flow.flow_id}", params={"okt": TOKEN})
    assert answer.status_code == 410
    assert answer.json()["error"]["code"] == "flow_expired"


@pytest.mark.parametrize(
    "query",
    [
        "okt=short",
        "okt=has+spaces+in+it",
        "okt=" + "x" * 300,
        f"okt={TOKEN}&okt={OTHER_TOKEN}",
        f"okt={TOKEN}%0A",  # one token, one spelling: a trailing newline is not the same token again
        f"okt=%20{TOKEN}",
        f"okt={TOKEN}%00",
    ],
)
async def test_a_malformed_callback_is_400_and_changes_nothing(shim: Shim, query: str) -> None:
    flow = shim.new_flow()
    answer = await shim.http.get(f"/v1/callback/{flow.flow_id}?{query}")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_callback"
    assert shim.flow(flow.flow_id) == flow
    assert shim.enqueuer.enqueued == []


@pytest.mark.parametrize("flow_id", ["0" * 40, "not-a-flow-id"])
async def test_a_malformed_token_is_400_whatever_the_flow(shim: Shim, flow_id: str) -> None:
    """The token's shape is checked before the flow is looked up: bad input is said to be bad input."""
    answer = await shim.http.get(f"/v1/callback/{flow_id}?okt=has+spaces+in+it")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_callback"
    unknown = await shim.http.get(f"/v1/callback/{flow_id}", params={"okt": TOKEN})
    assert unknown.status_code == 404


async def test_the_callback_needs_no_bearer_key(shim: Shim) -> None:
    flow = shim.new_flow()
    answer = await shim.http.get(
        f"/v1/callback/{flow.flow_id}", params={"okt": TOKEN}, headers={"Authorization": "Bearer wrong"}
    )
    assert answer.status_code == 303


async def test_the_usual_callback_costs_one_redis_call(shim: Shim) -> None:
    """A well-formed token for a flow awaiting it: the flow is read and claimed in one call."""
    warm_up, flow = shim.new_flow(), shim.new_flow()
    await shim.http.get(f"/v1/callback/{warm_up.flow_id}", params={"okt": OTHER_TOKEN})  # scripts loaded
    client = shim.store.redis
    with commands_sent(client) as sent:
        answer = await shim.http.get(f"/v1/callback/{flow.flow_id}", params={"okt": TOKEN})
    assert answer.status_code == 303
    assert "okc_browser=" in answer.headers["set-cookie"]  # a hosted flow's browser gets its cookie
    assert sent == ["EVALSHA"]
    assert shim.flow(flow.flow_id).state is FlowState.VERIFYING
