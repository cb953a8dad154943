"""Each injected fault, set at run time through `/_sandbox/faults` and observed from a real client."""

from __future__ import annotations

import json
import threading
import time
from email.utils import parsedate_to_datetime

import httpx
import pytest

from tests.support.sandboxes import CALLBACK, RunningSandbox, decide

# latencies measured to a tenth of a second
pytestmark = [pytest.mark.integration, pytest.mark.alone]


def test_latency_delays_answers_without_blocking_other_requests(
    api: httpx.Client, sandbox: RunningSandbox
) -> None:
    token = sandbox.authorize(api)
    sandbox.set_faults(latency_ms=400)
    durations: list[float] = []

    def verify() -> None:
        with sandbox.client() as own:
            started = time.monotonic()
            assert own.get(f"/v2/social-authorization/{token}").status_code == 200
            durations.append(time.monotonic() - started)

    threads = [threading.Thread(target=verify) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    controls_started = time.monotonic()
    assert httpx.get(sandbox.control_url("stats")).status_code == 200  # not delayed
    assert time.monotonic() - controls_started < 0.35  # under the 0.4 s latency: not delayed
    for thread in threads:
        thread.join()
    assert min(durations) >= 0.4
    assert time.monotonic() - started < 0.8  # four delayed calls overlapped


def test_error_fault_answers_503_and_does_no_work(api: httpx.Client, sandbox: RunningSandbox) -> None:
    token = sandbox.authorize(api)
    sandbox.set_faults(error_rate=1)
    response = api.get(f"/v2/social-authorization/{token}")
    assert response.status_code == 503
    assert response.json()["Result"] is False
    assert sandbox.connections() == []
    assert sandbox.stats()["faults"]["error"] == 1


def test_throttle_fault_answers_429_with_retry_after(api: httpx.Client, sandbox: RunningSandbox) -> None:
    sandbox.set_faults(throttle_rate=1, retry_after_s=7)
    response = api.post("/v2/social-authorization", data={"network": "LinkedIn", "url": CALLBACK})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json() == {"Result": False, "Errors": {"API": {"Error": "Rate limit exceeded"}}}
    stats = sandbox.stats()
    assert stats["responses_429"] == {"total": 1, "rate_limit": 0, "daily_limit": 0, "injected": 1}
    assert stats["blocked_count"] == 0


def test_throttle_retry_after_can_be_an_http_date(api: httpx.Client, sandbox: RunningSandbox) -> None:
    sandbox.set_faults(throttle_rate=1, retry_after_s=30, retry_after_format="http-date")
    response = api.get("/v2/credential/003-001000000000000-1")
    assert response.status_code == 429
    retry_at = parsedate_to_datetime(response.headers["retry-after"])
    assert retry_at.tzinfo is not None
    assert 29 <= retry_at.timestamp() - time.time() <= 32


def test_timeout_fault_hangs_until_the_client_gives_up(api: httpx.Client, sandbox: RunningSandbox) -> None:
    token = sandbox.authorize(api)
    sandbox.set_faults(timeout_rate=1)
    with sandbox.client(timeout=httpx.Timeout(5.0, read=0.5)) as impatient:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            impatient.get(f"/v2/social-authorization/{token}")
        assert time.monotonic() - started < 2
    assert sandbox.connections() == []  # no work done
    assert sandbox.stats()["faults"]["timeout"] == 1  # still serving


def test_drop_fault_does_the_work_then_closes_without_an_answer(
    api: httpx.Client, sandbox: RunningSandbox
) -> None:
    profile_token = sandbox.authorize(api, "Twitter", "profile")
    page_token = sandbox.authorize(api, "Facebook", "page")
    entity_id = api.get(f"/v2/social-authorization/{page_token}").json()["data"][1]["Id"]
    sandbox.set_faults(drop_rate=1)

    with pytest.raises(httpx.RemoteProtocolError, match="without sending"):
        api.get(f"/v2/social-authorization/{profile_token}")
    with pytest.raises(httpx.RemoteProtocolError, match="without sending"):
        api.put(f"/v2/social-authorization/{page_token}?ids={entity_id}")

    connected = {c["Network"]: c for c in sandbox.connections()}
    assert set(connected) == {"Twitter", "Facebook"}
    assert connected["Twitter"]["calls"] == 1
    assert connected["Facebook"]["Id"] == f"003-001000000000000-{entity_id}"

    # The retry after the lost answer sees the same result: the upstream is idempotent.
    sandbox.set_faults(drop_rate=0)
    retried = api.get(f"/v2/social-authorization/{profile_token}").json()["Credential"]
    assert retried["Id"] == connected["Twitter"]["Id"]


def test_malformed_fault_answers_200_with_a_body_that_is_not_json(
    api: httpx.Client, sandbox: RunningSandbox
) -> None:
    token = sandbox.authorize(api)
    sandbox.set_faults(malformed_rate=1)
    response = api.get(f"/v2/social-authorization/{token}")
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    assert sandbox.connections() == []


def test_reject_fault_answers_200_with_result_false_and_does_no_work(
    api: httpx.Client, sandbox: RunningSandbox
) -> None:
    token = sandbox.authorize(api)
    sandbox.set_faults(reject_rate=1)
    response = api.get(f"/v2/social-authorization/{token}")
    assert response.status_code == 200
    assert response.json() == {"Result": False, "Errors": {"API": {"Error": "The request was rejected"}}}
    assert sandbox.connections() == []
    assert sandbox.stats()["faults"]["reject"] == 1
    sandbox.set_faults(reject_rate=0)
    assert api.get(f"/v2/social-authorization/{token}").json()["Result"] is True  # the token still lives


def test_faults_never_touch_the_consent_page_or_the_controls(sandbox: RunningSandbox) -> None:
    with sandbox.client() as api:
        redirect = api.post("/v2/social-authorization", data={"network": "LinkedIn", "url": CALLBACK}).json()[
            "RedirectUrl"
        ]
    sandbox.set_faults(
        error_rate=0.25, throttle_rate=0.25, timeout_rate=0.25, drop_rate=0.25, latency_ms=1000
    )
    started = time.monotonic()
    assert httpx.get(redirect).status_code == 200
    assert decide(redirect, "approve").status_code == 303
    assert httpx.get(sandbox.connections_url).status_code == 200
    assert time.monotonic() - started < 0.5


def test_a_seed_makes_the_fault_sequence_repeatable(api: httpx.Client, sandbox: RunningSandbox) -> None:
    def statuses() -> list[int]:
        return [api.get("/v2/credential/003-001000000000000-1").status_code for _ in range(30)]

    # each 429 alone: an account-wide one would answer the calls after it without a roll of the dice
    sandbox.set_faults(error_rate=0.3, throttle_rate=0.3, throttle_scope="request", seed=1234)
    first = statuses()
    sandbox.set_faults(seed=1234)
    assert statuses() == first
    assert {404, 429, 503} <= set(first)


def test_fault_settings_are_validated_and_answered_in_full(sandbox: RunningSandbox) -> None:
    url = sandbox.control_url("faults")
    current = httpx.get(url).json()
    assert set(current) == {
        "latency_ms", "error_rate", "throttle_rate", "retry_after_s", "retry_after_format",
        "throttle_scope", "timeout_rate", "drop_rate", "malformed_rate", "reject_rate", "invalid_rate",
        "error_shape", "seed",
    }  # fmt: skip
    assert httpx.post(url, json={"error_rate": 0.1}).json() == {**current, "error_rate": 0.1}

    for body, field in [
        ({"error_rate": 2}, "error_rate"),
        ({"drop_rate": -0.1}, "drop_rate"),
        ({"timeout_rate": "often"}, "timeout_rate"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"retry_after_s": 1.5}, "retry_after_s"),
        ({"retry_after_format": "rfc850"}, "retry_after_format"),
        ({"throttle_scope": "tenant"}, "throttle_scope"),
        ({"seed": "x"}, "seed"),
        ({"typo_rate": 0.1}, "typo_rate"),
        ({"throttle_rate": 0.6, "malformed_rate": 0.6}, "throttle_rate"),
    ]:
        refused = httpx.post(url, json=body)
        assert refused.status_code == 400, body
        assert refused.json() == {
            "Result": False,
            "Errors": {"Param": {field: refused.json()["Errors"]["Param"][field]}},
        }
    for raw in (b"not json", b"[1, 2]", b"\xff\xfe", b"[" * 50_000):
        assert httpx.post(url, content=raw).status_code == 400
    assert httpx.get(url).json()["error_rate"] == 0.1  # refusals changed nothing


def test_stats_count_calls_and_faults_by_kind(api: httpx.Client, sandbox: RunningSandbox) -> None:
    sandbox.set_faults(error_rate=1)
    for _ in range(3):
        api.get("/v2/credential/003-001000000000000-1")
    sandbox.set_faults(error_rate=0, malformed_rate=1)
    api.get("/v2/credential/003-001000000000000-1")
    stats = sandbox.stats()
    assert stats["v2_calls"] == 4
    assert stats["faults"] == {
        "error": 3, "throttle": 0, "timeout": 0, "drop": 0, "malformed": 1, "reject": 0,
    }  # fmt: skip
    assert stats["statuses"] == {"200": 1, "503": 3}
