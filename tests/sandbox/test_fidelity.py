"""The sandbox is as strict as Oktopost, so client bugs show here first: every documented shape of
`Errors`, 429s without Retry-After, credentials answered `invalid`, and the fields credentials carry."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.sandboxes import CALLBACK, RunningSandbox

pytestmark = pytest.mark.integration

START = "/v2/social-authorization"
UNKNOWN_TOKEN = f"{START}/591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"


def refusals(sandbox: RunningSandbox, api: httpx.Client) -> dict[str, httpx.Response]:
    """One refusal of each kind the sandbox makes, for the shape in force."""
    return {
        "unauthorized": httpx.get(f"{sandbox.url}{UNKNOWN_TOKEN}", auth=("demo-account", "wrong")),
        "missing parameter": api.post(START, data={"url": CALLBACK}),
        "bad network spelling": api.post(START, data={"network": "linkedin", "url": CALLBACK}),
        "unknown token": api.get(UNKNOWN_TOKEN),
        "unknown route": api.get("/v2/nothing-here"),
        "wrong method": api.delete(START),
    }


@pytest.mark.parametrize(
    ("shape", "looks_like"),
    [
        ("list", lambda errors: errors == []),
        ("param", lambda errors: list(errors) == ["Param"] and list(errors["Param"]) == ["get"]),
        ("object", lambda errors: list(errors) in (["API"], ["Param"])),
    ],
)
def test_every_refusal_takes_the_chosen_error_shape(
    sandbox: RunningSandbox, api: httpx.Client, shape: str, looks_like: Any
) -> None:
    assert sandbox.set_faults(error_shape=shape)["error_shape"] == shape
    for kind, response in refusals(sandbox, api).items():
        assert 400 <= response.status_code < 500, kind
        body = response.json()
        assert body["Result"] is False, kind
        assert looks_like(body["Errors"]), (kind, body)


def test_param_shape_carries_the_message(sandbox: RunningSandbox, api: httpx.Client) -> None:
    sandbox.set_faults(error_shape="param")
    assert api.put(f"{UNKNOWN_TOKEN}?ids=1").json() == {
        "Result": False,
        "Errors": {"Param": {"get": "Token is invalid or has expired"}},
    }
    assert api.post(START, data={"url": CALLBACK}).json() == {
        "Result": False,
        "Errors": {"Param": {"get": "Missing value for parameter network"}},
    }


def test_injected_refusals_and_429s_take_the_shape_too(sandbox: RunningSandbox, api: httpx.Client) -> None:
    sandbox.set_faults(error_shape="list", reject_rate=1)
    rejected = api.get(UNKNOWN_TOKEN)
    assert (rejected.status_code, rejected.json()) == (200, {"Result": False, "Errors": []})
    sandbox.set_faults(reject_rate=0, throttle_rate=1)
    throttled = api.get(UNKNOWN_TOKEN)
    assert (throttled.status_code, throttled.json()) == (429, {"Result": False, "Errors": []})


def test_the_default_shape_is_an_object_keyed_by_kind(sandbox: RunningSandbox, api: httpx.Client) -> None:
    assert sandbox.set_faults()["error_shape"] == "object"
    assert api.get(UNKNOWN_TOKEN).json() == {
        "Result": False,
        "Errors": {"API": {"Error": "Token is invalid or has expired"}},
    }


def test_a_reset_returns_to_the_object_shape(sandbox: RunningSandbox, api: httpx.Client) -> None:
    sandbox.set_faults(error_shape="list")
    sandbox.reset()
    assert "API" in api.get(UNKNOWN_TOKEN).json()["Errors"]


def test_a_null_retry_after_sends_429_without_the_header(sandbox: RunningSandbox, api: httpx.Client) -> None:
    assert sandbox.set_faults(throttle_rate=1, retry_after_s=None)["retry_after_s"] is None
    throttled = api.get(UNKNOWN_TOKEN)
    assert throttled.status_code == 429
    assert "retry-after" not in throttled.headers
    sandbox.set_faults(retry_after_s=7)
    assert api.get(UNKNOWN_TOKEN).headers["retry-after"] == "7"


def test_a_null_retry_after_leaves_it_off_the_rate_limits_429_too() -> None:
    limited = RunningSandbox("--rate-limit", "1/minute", "--block-seconds", "60", "--retry-after", "none")
    try:
        with limited.client() as api:
            api.get(UNKNOWN_TOKEN)
            blocked = api.get(UNKNOWN_TOKEN)
            assert blocked.status_code == 429
            assert "retry-after" not in blocked.headers
        assert limited.stats()["blocked"] is True
    finally:
        limited.stop()


def test_invalid_rate_answers_credentials_with_status_invalid(
    sandbox: RunningSandbox, api: httpx.Client
) -> None:
    sandbox.set_faults(invalid_rate=1)
    profile = api.get(f"{START}/{sandbox.authorize(api, 'Twitter', 'profile')}").json()["Credential"]
    assert profile["Status"] == "invalid"
    assert api.get(f"/v2/credential/{profile['Id']}").json()["Credential"]["Status"] == "invalid"
    page_token = sandbox.authorize(api, "Facebook", "page")
    offered = api.get(f"{START}/{page_token}").json()["data"]
    put = api.put(f"{START}/{page_token}?ids={offered[1]['Id']},{offered[2]['Id']}").json()
    assert [c["Status"] for c in put["Credentials"]] == ["invalid", "invalid"]
    sandbox.set_faults(invalid_rate=0)
    # A retried PUT answers what the first one did: the upstream is idempotent.
    assert api.put(f"{START}/{page_token}?ids={offered[1]['Id']},{offered[2]['Id']}").json() == put
    assert {c["Status"] for c in sandbox.connections()} == {"invalid"}


def test_some_credentials_are_invalid_at_a_middling_rate(sandbox: RunningSandbox, api: httpx.Client) -> None:
    sandbox.set_faults(invalid_rate=0.5, seed=11)
    statuses = [
        api.get(f"{START}/{sandbox.authorize(api, 'LinkedIn', 'profile')}").json()["Credential"]["Status"]
        for _ in range(40)
    ]
    assert set(statuses) == {"valid", "invalid"}


def test_credentials_carry_a_display_name(sandbox: RunningSandbox, api: httpx.Client) -> None:
    profile = api.get(f"{START}/{sandbox.authorize(api, 'YouTube', 'profile')}").json()["Credential"]
    assert profile["DisplayName"]
    assert profile["Name"] == f"{profile['DisplayName']}'s YouTube"
    group_token = sandbox.authorize(api, "LinkedIn", "group")
    offered = api.get(f"{START}/{group_token}").json()["data"][0]
    connected = api.put(f"{START}/{group_token}?ids={offered['Id']}").json()["Credentials"][0]
    assert connected["DisplayName"] == offered["Name"]
    read_back = api.get(f"/v2/credential/{connected['Id']}").json()["Credential"]
    assert read_back["DisplayName"] == offered["Name"]
