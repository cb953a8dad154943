"""Several accounts on one sandbox, each with its own limits; the daily cap; `/_sandbox/stats`."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.sandboxes import RunningSandbox

pytestmark = pytest.mark.integration

OTHER = ("other-account", "other:key")  # a key may hold ':'
UNKNOWN_TOKEN = "/v2/social-authorization/591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"


@pytest.fixture
def two_accounts() -> Iterator[RunningSandbox]:
    running = RunningSandbox(
        "--account", ":".join(OTHER), "--rate-limit", "3/minute", "--block-seconds", "60"
    )
    try:
        yield running
    finally:
        running.stop()


def test_stats_start_at_zero_for_every_account(two_accounts: RunningSandbox) -> None:
    stats = two_accounts.stats()
    assert {name: stats[name] for name in ("calls", "throttled", "blocked", "accounts")} == {
        "calls": 0,
        "throttled": 0,
        "blocked": False,
        "accounts": {
            "demo-account": {"calls": 0, "throttled": 0, "blocked": False},
            "other-account": {"calls": 0, "throttled": 0, "blocked": False},
        },
    }


def test_each_account_has_its_own_rate_limit_and_block(two_accounts: RunningSandbox) -> None:
    with two_accounts.client() as demo, two_accounts.client(auth=OTHER) as other:
        assert [demo.get(UNKNOWN_TOKEN).status_code for _ in range(5)] == [404, 404, 404, 429, 429]
        assert other.get(UNKNOWN_TOKEN).status_code == 404  # the other account is not blocked
    stats = two_accounts.stats()
    assert (stats["calls"], stats["throttled"], stats["blocked"]) == (6, 2, True)
    assert stats["accounts"] == {
        "demo-account": {"calls": 5, "throttled": 2, "blocked": True},
        "other-account": {"calls": 1, "throttled": 0, "blocked": False},
    }
    two_accounts.reset()
    assert two_accounts.stats()["blocked"] is False


def test_a_refused_key_is_counted_but_in_no_account(two_accounts: RunningSandbox) -> None:
    wrong_pair = ("other-account", "demo-key")
    assert httpx.get(f"{two_accounts.url}{UNKNOWN_TOKEN}", auth=wrong_pair).status_code == 401
    stats = two_accounts.stats()
    assert stats["calls"] == 1
    assert all(counts["calls"] == 0 for counts in stats["accounts"].values())


def test_injected_429s_count_as_throttled(sandbox: RunningSandbox, api: httpx.Client) -> None:
    sandbox.set_faults(throttle_rate=1, throttle_scope="request")  # the next call is dropped, not refused
    api.get(UNKNOWN_TOKEN)
    sandbox.set_faults(throttle_rate=0, timeout_rate=0, drop_rate=1)
    with pytest.raises(httpx.TransportError):
        api.get(UNKNOWN_TOKEN)  # dropped: never answered, so not counted
    stats = sandbox.stats()
    assert (stats["calls"], stats["throttled"], stats["blocked"]) == (1, 1, False)
    assert stats["accounts"] == {"demo-account": {"calls": 1, "throttled": 1, "blocked": False}}


def test_connections_name_their_account_and_tokens_stay_with_it(two_accounts: RunningSandbox) -> None:
    with two_accounts.client() as demo, two_accounts.client(auth=OTHER) as other:
        demo_token = two_accounts.authorize(demo, "LinkedIn", "profile")
        other_token = two_accounts.authorize(other, "Facebook", "profile")
        assert other.get(f"/v2/social-authorization/{demo_token}").status_code == 404
        assert demo.get(f"/v2/social-authorization/{demo_token}").status_code == 200
        assert other.get(f"/v2/social-authorization/{other_token}").status_code == 200
    assert {(c["Account"], c["Network"]) for c in two_accounts.connections()} == {
        ("demo-account", "LinkedIn"),
        ("other-account", "Facebook"),
    }


def test_the_consent_page_names_the_account_that_asked(two_accounts: RunningSandbox) -> None:
    with two_accounts.client(auth=OTHER) as other:
        started = other.post(
            "/v2/social-authorization", data={"network": "Instagram", "url": "https://app.example/cb"}
        ).json()
    assert "other-account" in httpx.get(started["RedirectUrl"]).text


def test_past_the_daily_limit_429_until_midnight_utc() -> None:
    capped = RunningSandbox("--daily-limit", "3", "--account", ":".join(OTHER))
    try:
        with capped.client() as demo, capped.client(auth=OTHER) as other:
            assert [demo.get(UNKNOWN_TOKEN).status_code for _ in range(3)] == [404, 404, 404]
            refused = demo.get(UNKNOWN_TOKEN)
            to_midnight = 86400 - time.time() % 86400
            assert refused.status_code == 429
            assert refused.json()["Result"] is False
            assert abs(int(refused.headers["retry-after"]) - to_midnight) <= 2
            assert other.get(UNKNOWN_TOKEN).status_code == 404  # its own daily count
        stats = capped.stats()
        assert stats["accounts"]["demo-account"] == {"calls": 4, "throttled": 1, "blocked": False}
        assert stats["blocked"] is False  # a daily cap is not the burst limit's block
    finally:
        capped.stop()


def test_without_a_daily_limit_there_is_none(api: httpx.Client) -> None:
    assert {api.get(UNKNOWN_TOKEN).status_code for _ in range(30)} == {404}


def test_an_injected_429_refuses_every_call_of_the_account_until_retry_after(
    two_accounts: RunningSandbox,
) -> None:
    two_accounts.set_faults(throttle_rate=1, retry_after_s=1)
    with two_accounts.client() as demo, two_accounts.client(auth=OTHER) as other:
        assert demo.get(UNKNOWN_TOKEN).status_code == 429
        throttled_at = time.monotonic()
        two_accounts.set_faults(throttle_rate=0)
        refused = demo.post(
            "/v2/social-authorization", data={"network": "LinkedIn", "url": "https://a.example"}
        )
        assert (refused.status_code, refused.headers["retry-after"]) == (429, "1")
        assert other.get(UNKNOWN_TOKEN).status_code == 404  # the other account was not throttled
        time.sleep(max(0.0, throttled_at + 1.05 - time.monotonic()))
        assert demo.get(UNKNOWN_TOKEN).status_code == 404
    stats = two_accounts.stats()
    assert stats["responses_429"]["injected"] == 2
    assert stats["accounts"]["demo-account"] == {"calls": 3, "throttled": 2, "blocked": False}


def test_a_request_scoped_429_refuses_only_its_call(two_accounts: RunningSandbox) -> None:
    assert (
        two_accounts.set_faults(throttle_rate=1, retry_after_s=60, throttle_scope="request")["throttle_scope"]
        == "request"
    )
    with two_accounts.client() as demo:
        assert demo.get(UNKNOWN_TOKEN).status_code == 429
        two_accounts.set_faults(throttle_rate=0)
        assert demo.get(UNKNOWN_TOKEN).status_code == 404


def test_a_reset_lifts_an_account_wide_429(two_accounts: RunningSandbox) -> None:
    two_accounts.set_faults(throttle_rate=1, retry_after_s=60)
    with two_accounts.client() as demo:
        assert demo.get(UNKNOWN_TOKEN).status_code == 429
        two_accounts.reset()
        assert demo.get(UNKNOWN_TOKEN).status_code == 404
