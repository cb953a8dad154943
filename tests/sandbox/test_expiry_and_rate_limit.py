"""Token expiry and the burst limit, each on a sandbox process started with its own flags."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.sandboxes import CALLBACK, RunningSandbox, decide

pytestmark = pytest.mark.integration

EXPIRED = {"Result": False, "Errors": {"API": {"Error": "Token is invalid or has expired"}}}
RATE_LIMITED = {"Result": False, "Errors": {"API": {"Error": "Rate limit exceeded"}}}


@pytest.fixture(scope="module")
def short_lived() -> Iterator[RunningSandbox]:
    running = RunningSandbox("--token-ttl", "1")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def limited() -> Iterator[RunningSandbox]:
    running = RunningSandbox("--rate-limit", "5/second", "--block-seconds", "2")
    yield running
    running.stop()


def test_tokens_expire_token_ttl_seconds_after_consent(short_lived: RunningSandbox) -> None:
    short_lived.reset()
    with short_lived.client() as api:
        redirect = api.post(
            "/v2/social-authorization", data={"network": "LinkedIn", "url": CALLBACK, "type": "page"}
        ).json()["RedirectUrl"]
        time.sleep(1.2)  # waiting before consent does not use up the token's life
        token = httpx.URL(decide(redirect, "approve").headers["location"]).params["okt"]
        entity_id = api.get(f"/v2/social-authorization/{token}").json()["data"][0]["Id"]
        assert api.get(f"/v2/social-authorization/{token}").status_code == 200

        time.sleep(1.2)

        verify = api.get(f"/v2/social-authorization/{token}")
        assert verify.status_code == 404
        assert verify.json() == EXPIRED
        put = api.put(f"/v2/social-authorization/{token}?ids={entity_id}")
        assert put.status_code == 404
        assert put.json() == EXPIRED
    assert short_lived.connections() == []


def test_an_approved_request_keeps_its_token_when_approved_again(short_lived: RunningSandbox) -> None:
    short_lived.reset()
    with short_lived.client() as api:
        redirect = api.post("/v2/social-authorization", data={"network": "LinkedIn", "url": CALLBACK}).json()[
            "RedirectUrl"
        ]
        first = decide(redirect, "approve").headers["location"]
        time.sleep(1.2)
        # Approving again does not renew the token: it is the same one, and it has expired.
        assert decide(redirect, "approve").headers["location"] == first
        token = httpx.URL(first).params["okt"]
        assert api.get(f"/v2/social-authorization/{token}").status_code == 404


def call(api: httpx.Client) -> httpx.Response:
    return api.get("/v2/credential/003-001000000000000-1")  # a cheap call that counts: 404 while admitted


@pytest.mark.alone  # six calls within a second, with a pause between
def test_burst_limit_is_a_strict_sliding_window_then_blocks(limited: RunningSandbox) -> None:
    limited.reset()
    with limited.client() as api:
        started = time.monotonic()
        assert [call(api).status_code for _ in range(3)] == [404] * 3
        time.sleep(0.6)
        assert [call(api).status_code for _ in range(2)] == [404] * 2
        # A fixed window starting on the second could let this through; a sliding window must not.
        exceeding = call(api)
        assert time.monotonic() - started < 1.0, "the machine is too slow for this timing"
        assert exceeding.status_code == 429
        assert exceeding.json() == RATE_LIMITED
        assert exceeding.headers["retry-after"] == "2"

        blocked = call(api)
        assert blocked.status_code == 429
        assert blocked.json() == RATE_LIMITED
        assert int(blocked.headers["retry-after"]) in (1, 2)

        # The consent page and the controls are never limited.
        assert httpx.get(f"{limited.url}/oauth/authorize", params={"request": "x"}).status_code == 404
        stats = limited.stats()
        assert stats["blocked_count"] == 1
        assert stats["ever_blocked"] is True
        assert stats["responses_429"] == {"total": 2, "rate_limit": 2, "daily_limit": 0, "injected": 0}

        time.sleep(1.0)
        later = call(api)
        assert later.status_code == 429
        assert later.headers["retry-after"] == "1"

        time.sleep(1.1)
        assert call(api).status_code == 404  # block over
        assert limited.stats()["blocked_count"] == 1


def test_unauthenticated_calls_do_not_count_towards_the_limit(limited: RunningSandbox) -> None:
    limited.reset()
    with limited.client(auth=("demo-account", "wrong")) as stranger:
        assert {call(stranger).status_code for _ in range(10)} == {401}
    with limited.client() as api:
        assert [call(api).status_code for _ in range(5)] == [404] * 5
        assert call(api).status_code == 429


def test_reset_lifts_a_block(limited: RunningSandbox) -> None:
    limited.reset()
    with limited.client() as api:
        statuses = [call(api).status_code for _ in range(7)]
        assert statuses == [404] * 5 + [429] * 2
        limited.reset()
        assert call(api).status_code == 404
        assert limited.stats()["blocked_count"] == 0


def test_blocked_retry_after_can_be_an_http_date(limited: RunningSandbox) -> None:
    from email.utils import parsedate_to_datetime

    limited.reset()
    limited.set_faults(retry_after_format="http-date")
    with limited.client() as api:
        statuses = [call(api) for _ in range(6)]
    blocked = statuses[-1]
    assert blocked.status_code == 429
    retry_at = parsedate_to_datetime(blocked.headers["retry-after"]).timestamp()
    assert 1 <= retry_at - time.time() <= 3.1
