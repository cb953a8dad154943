"""What a verify answer must be to complete a flow (fakeredis, the real client over MockTransport): for the
flow's network and entity type, and its credentials reported as Oktopost gave them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.work import PAGES, PROFILE, TOKEN, claimed, make_context, page_flow_completed
from worker.tasks.work import TaskOutcome, verify_flow


def _verified(answer: dict[str, Any], entity_type: str) -> tuple[TaskOutcome, dict[str, Any]]:
    context = make_context(lambda _request: httpx.Response(200, json=answer))
    outcome = verify_flow(context, claimed(context, entity_type))  # a LinkedIn flow
    return outcome, context.store.events("flow-1")[-1]


PROFILE_CREDENTIAL: dict[str, Any] = dict(PROFILE["Credential"])  # type: ignore[call-overload]
FIRST_PAGE: dict[str, Any] = PAGES["data"][0]  # type: ignore[index]


def _credential(**fields: str) -> dict[str, Any]:
    return {"Result": True, "Credential": {**PROFILE_CREDENTIAL, **fields}}


@pytest.mark.parametrize(
    ("answer", "entity_type"),
    [
        (PROFILE, "page"),  # a Credential for a page flow
        (PROFILE, "group"),
        (PAGES, "profile"),  # entities for a profile flow
        (_credential(Network="Twitter"), "profile"),  # a credential on another network
        ({**PAGES, "data": [{**FIRST_PAGE, "Network": "Facebook"}]}, "page"),  # entities likewise
    ],
)
def test_a_verify_answer_for_another_network_or_type_fails_the_flow_as_a_mismatch(
    answer: dict[str, Any], entity_type: str
) -> None:
    outcome, event = _verified(answer, entity_type)
    assert outcome is TaskOutcome.FAILED
    assert event["type"] == "authorization.failed"
    assert event["data"]["code"] == "upstream_mismatch"
    assert event["data"]["retryable"] is False


def test_a_network_spelled_in_another_case_is_the_same_network_and_passed_on_as_the_flow_spells_it() -> None:
    outcome, event = _verified(_credential(Network="linkedin"), "profile")
    assert outcome is TaskOutcome.COMPLETED
    assert event["data"]["credentials"][0]["network"] == "LinkedIn"
    outcome, event = _verified({**PAGES, "data": [{**FIRST_PAGE, "Network": "LINKEDIN"}]}, "page")
    assert outcome is TaskOutcome.SELECTION_REQUIRED
    assert event["data"]["entities"][0]["network"] == "LinkedIn"


@pytest.mark.parametrize(
    "entities",
    [
        [],  # nothing to choose from
        [{**FIRST_PAGE, "Id": "3,33"}],  # only an id the completion could never send back
    ],
)
def test_a_verify_answer_with_nothing_that_can_be_chosen_fails_the_flow_as_a_mismatch(
    entities: list[dict[str, Any]],
) -> None:
    outcome, event = _verified({**PAGES, "data": entities}, "page")
    assert outcome is TaskOutcome.FAILED
    assert event["data"]["code"] == "upstream_mismatch"


def test_an_entity_whose_id_holds_a_comma_is_not_offered() -> None:
    answer = {**PAGES, "data": [*PAGES["data"], {**FIRST_PAGE, "Id": "3,33"}]}  # type: ignore[misc]
    outcome, event = _verified(answer, "page")
    assert outcome is TaskOutcome.SELECTION_REQUIRED
    assert [entity["id"] for entity in event["data"]["entities"]] == ["1", "2", "3"]


def _completed_with(
    put_answer: dict[str, Any], verify_answer: dict[str, Any] | None = None
) -> tuple[TaskOutcome, list[dict[str, Any]], list[httpx.Request]]:
    """`page_flow_completed`'s outcome, with the flow's events and the requests Oktopost saw."""
    outcome, context, seen = page_flow_completed(put_answer, verify_answer)
    return outcome, context.store.events("flow-1"), seen


PUT_P2 = {
    "Result": True,
    "Credentials": [{"Id": "003-2", "Name": "P2", "Status": "valid", "Network": "LinkedIn"}],
}


def test_the_completion_uses_the_token_verify_gave_for_it() -> None:
    for_the_next_step = "pagetok.FROM-VERIFY-123456"
    outcome, _, seen = _completed_with(PUT_P2, {**PAGES, "token": for_the_next_step})
    assert outcome is TaskOutcome.COMPLETED
    verify, put = seen
    assert verify.url.path == f"/v2/social-authorization/{TOKEN}"
    assert (put.method, put.url.path) == ("PUT", f"/v2/social-authorization/{for_the_next_step}")
    _, _, seen = _completed_with(PUT_P2)  # the reference's own case: the same token echoed
    assert seen[1].url.path == f"/v2/social-authorization/{TOKEN}"


@pytest.mark.parametrize(
    "credentials",
    [
        [],  # nothing connected
        [{"Id": "003-2", "Name": "P2", "Status": "valid", "Network": "Facebook"}],  # another network's
    ],
)
def test_a_completion_that_connected_nothing_of_the_flows_fails_it_as_a_mismatch(
    credentials: list[dict[str, Any]],
) -> None:
    outcome, events, _ = _completed_with({"Result": True, "Credentials": credentials})
    event = events[-1]
    assert outcome is TaskOutcome.FAILED
    assert event["type"] == "authorization.failed"
    assert event["data"]["code"] == "upstream_mismatch"


def test_an_invalid_credential_is_reported_with_its_status_and_display_name() -> None:
    outcome, event = _verified(_credential(Status="invalid", DisplayName="Jo at Acme"), "profile")
    assert outcome is TaskOutcome.COMPLETED
    credential = event["data"]["credentials"][0]
    assert credential["status"] == "invalid"
    assert credential["display_name"] == "Jo at Acme"


def test_a_credential_without_display_name_has_none_in_its_event() -> None:
    _, event = _verified(PROFILE, "profile")
    assert "display_name" not in event["data"]["credentials"][0]


def test_completed_pages_carry_their_status_and_display_name() -> None:
    put_answer = {
        "Result": True,
        "Credentials": [
            {"Id": "003-2", "Name": "P2", "Status": "invalid", "Network": "LinkedIn", "DisplayName": "P Two"}
        ],
    }
    outcome, events, _ = _completed_with(put_answer)
    assert outcome is TaskOutcome.COMPLETED
    credential = events[-1]["data"]["credentials"][0]
    assert (credential["status"], credential["display_name"]) == ("invalid", "P Two")
    assert TOKEN not in str(events)
