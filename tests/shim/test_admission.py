"""New flows refused while the Oktopost account cannot serve them: paused after a 429, or its day's calls
spoken for; each refusal a 503 with a whole-seconds Retry-After, and no call made upstream."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.shim import CALLER, PREFIX, Shim, open_shim
from worker.upstream.account import seconds_to_midnight

pytestmark = pytest.mark.anyio

PROFILE_START = {"network": "LinkedIn", "type": "profile"}
PAGE_START = {"network": "LinkedIn", "type": "page"}


def _refusal(answer: httpx.Response) -> tuple[int, str, int]:
    retry_after = answer.headers["retry-after"]
    assert retry_after.isdigit()
    return answer.status_code, answer.json()["error"]["code"], int(retry_after)


def _flows(shim: Shim) -> list[bytes]:
    return list(shim.store.redis.scan_iter(f"{PREFIX}:flow:*"))


async def test_a_new_flow_is_refused_while_the_account_is_paused(shim: Shim) -> None:
    shim.budget.account.pause(retry_after=300)
    status, code, retry_after = _refusal(
        await shim.http.post("/v1/authorizations", json=PROFILE_START, headers=CALLER)
    )
    assert (status, code) == (503, "upstream_blocked")
    assert 295 <= retry_after <= 300
    assert shim.oktopost.requests == []
    assert _flows(shim) == []


async def test_a_429_at_step1_pauses_the_account_and_refuses_the_flow(shim: Shim) -> None:
    shim.oktopost.refusal = httpx.Response(429, headers={"Retry-After": "120"})
    first = await shim.http.post("/v1/authorizations", json=PROFILE_START, headers=CALLER)
    assert _refusal(first)[:2] == (503, "upstream_blocked")
    shim.oktopost.refusal = None
    second = await shim.http.post("/v1/authorizations", json=PROFILE_START, headers=CALLER)
    assert _refusal(second)[:2] == (503, "upstream_blocked")
    assert len(shim.oktopost.requests) == 1  # nothing more was sent during the pause
    paused_until = shim.budget.account.standing().paused_until
    assert paused_until is not None
    assert paused_until - time.time() > 100


async def test_a_new_flow_is_refused_however_soon_the_pause_ends(shim: Shim) -> None:
    shim.budget.account.pause(retry_after=3)
    started = time.monotonic()
    answer = await shim.http.post("/v1/authorizations", json=PROFILE_START, headers=CALLER)
    status, code, retry_after = _refusal(answer)
    assert (status, code) == (503, "upstream_blocked")
    assert retry_after in (2, 3)
    assert time.monotonic() - started < 1.0  # told at once, not kept waiting for the pause's end
    assert shim.oktopost.requests == []
    assert _flows(shim) == []


async def test_a_429_with_a_short_retry_after_at_step1_refuses_the_flow_at_once(shim: Shim) -> None:
    shim.oktopost.refusal = httpx.Response(429, headers={"Retry-After": "3"})
    started = time.monotonic()
    answer = await shim.http.post("/v1/authorizations", json=PROFILE_START, headers=CALLER)
    status, code, retry_after = _refusal(answer)
    assert (status, code) == (503, "upstream_blocked")
    assert 1 <= retry_after <= 3
    assert time.monotonic() - started < 2.5  # Step 1's backoff, then the pause's answer: not its end
    assert len(shim.oktopost.requests) == 1  # no call while the account is paused
    assert _flows(shim) == []


async def test_new_flows_are_admitted_again_once_the_pause_is_over(shim: Shim) -> None:
    shim.budget.account.pause(retry_after=0.3)
    time.sleep(0.35)
    answer = await shim.http.post("/v1/authorizations", json=PROFILE_START, headers=CALLER)
    assert answer.status_code == 201


@pytest.mark.parametrize(("start", "admitted"), [(PROFILE_START, 2), (PAGE_START, 1)])
async def test_flows_are_admitted_while_the_day_covers_them_then_refused_until_midnight_utc(
    start: dict[str, str], admitted: int
) -> None:
    async with open_shim(daily_limit=5) as shim:  # a profile needs 2 calls, a page or group 3
        for _ in range(admitted):
            answer = await shim.http.post("/v1/authorizations", json=start, headers=CALLER)
            assert answer.status_code == 201
        refused = await shim.http.post("/v1/authorizations", json=start, headers=CALLER)
        status, code, retry_after = _refusal(refused)
        assert (status, code) == (503, "daily_limit_reached")
        assert abs(retry_after - seconds_to_midnight(time.time())) <= 2
        assert len(shim.oktopost.requests) == admitted
        assert len({key for key in _flows(shim) if key.endswith(b":state")}) == admitted


async def test_metrics_show_the_pause_and_the_days_remaining_calls() -> None:
    async with open_shim(daily_limit=50) as shim:
        assert (
            await shim.http.post("/v1/authorizations", json=PROFILE_START, headers=CALLER)
        ).status_code == 201
        shim.budget.account.pause(retry_after=60)
        text = (await shim.http.get("/metrics")).text
    assert 'okc_account_paused{account="demo-account"} 1.0' in text
    assert 'okc_account_pauses_total{account="demo-account"} 1.0' in text
    assert 'okc_account_daily_calls_remaining{account="demo-account"} 49.0' in text
    assert 'okc_account_calls_reserved{account="demo-account"} 1.0' in text
    assert 'okc_account_flows_parked{account="demo-account"} 0.0' in text
