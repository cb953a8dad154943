"""Fast in-process tests of the sandbox's parts: rate window, fault dice, account, catalog, tokens."""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime

import pytest

from sandbox.authorizations import (
    APPROVE,
    DENY,
    REQUEST_LIFETIME_S,
    Account,
    DecisionConflict,
    NotSelectable,
    TokenInvalid,
    UnknownEntity,
    UnknownRequest,
    add_query_param,
    new_token,
)
from sandbox.catalog import ENTITY_TYPES, NETWORKS, selectable_entities
from sandbox.faults import FaultConfig, FaultConfigError, Faults
from sandbox.ratelimit import DailyLimit, Rate, SlidingWindowLimiter, parse_rate
from sandbox.refusals import Refusal, param_refusal
from tests.support.clocks import FakeClock


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("60/minute", Rate(60, 60)),
        ("10/second", Rate(10, 1)),
        ("10/s", Rate(10, 1)),
        ("100/5minutes", Rate(100, 300)),
        ("20000/day", Rate(20000, 86400)),
        (" 3 / Hour ", Rate(3, 3600)),
    ],
)
def test_rates_parse(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "text", ["", "60", "60/fortnight", "0/minute", "-1/second", "x/second", "5/0seconds"]
)
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=f"got {re.escape(repr(text))}$"):
        parse_rate(text)


def test_sliding_window_never_admits_more_than_n_in_any_window() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(Rate(3, 10), block_s=0, clock=clock)
    admitted: list[float] = []
    for _ in range(200):
        if limiter.check().allowed:
            admitted.append(clock.now)
        clock.now += 0.7
    for index, started in enumerate(admitted):
        assert sum(1 for at in admitted[index:] if at < started + 10) <= 3
    assert len(admitted) >= 3 * (200 * 0.7 // 10)


def test_exceeding_the_window_blocks_and_counts_down_retry_after() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(Rate(2, 60), block_s=900, clock=clock)
    assert limiter.check().allowed
    assert limiter.check().allowed
    exceeding = limiter.check()
    assert (exceeding.allowed, exceeding.retry_after_s, exceeding.blocked_now) == (False, 900, True)
    clock.now += 899.2
    still = limiter.check()
    assert (still.allowed, still.retry_after_s, still.blocked_now) == (False, 1, False)
    clock.now += 0.8
    assert limiter.check().allowed


def test_without_a_block_retry_after_is_the_wait_for_a_free_slot() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(Rate(1, 10), block_s=0, clock=clock)
    assert limiter.check().allowed
    clock.now += 2.5
    verdict = limiter.check()
    assert (verdict.allowed, verdict.retry_after_s, verdict.blocked_now) == (False, 8, False)


def test_fault_config_updates_partially_and_names_bad_fields() -> None:
    config = FaultConfig().updated({"error_rate": 0.5, "latency_ms": 20})
    assert (config.error_rate, config.latency_ms, config.drop_rate) == (0.5, 20.0, 0.0)
    kept = config.updated({"drop_rate": 0.4})  # room for both: the earlier rate stays
    assert (kept.error_rate, kept.drop_rate) == (0.5, 0.4)
    switched = kept.updated({"throttle_rate": 1})  # no room: the rates set now win, the others make way
    assert (switched.error_rate, switched.throttle_rate, switched.drop_rate) == (0.0, 1.0, 0.0)
    assert Faults(switched).roll() == "throttle"
    with pytest.raises(FaultConfigError) as refused:  # one setting's own rates past 1: refused whole
        config.updated({"timeout_rate": 0.3, "drop_rate": 0.3, "malformed_rate": 0.5})
    assert refused.value.field == "timeout_rate"
    cases: list[tuple[dict[str, object], str]] = [
        ({"error_rate": True}, "error_rate"),
        ({"latency_ms": float("nan")}, "latency_ms"),
        ({"retry_after_s": -1}, "retry_after_s"),
        ({"seed": 1.5}, "seed"),
        ({"nonsense": 1}, "nonsense"),
    ]
    for changes, field in cases:
        with pytest.raises(FaultConfigError) as refused:
            config.updated(changes)
        assert refused.value.field == field


def test_fault_dice_follow_the_rates_and_repeat_with_a_seed() -> None:
    faults = Faults(FaultConfig(error_rate=0.2, throttle_rate=0.2, timeout_rate=0.2, drop_rate=0.2, seed=7))
    first = [faults.roll() for _ in range(5000)]
    for kind in ("error", "throttle", "timeout", "drop", None):
        assert 0.17 < first.count(kind) / 5000 < 0.23, kind
    assert "malformed" not in first
    faults.configure({"seed": 7})
    assert [faults.roll() for _ in range(5000)] == first
    faults.reset()
    assert [faults.roll() for _ in range(5000)] == first


def test_certain_faults_always_strike() -> None:
    for kind in ("error", "throttle", "timeout", "drop", "malformed"):
        faults = Faults(FaultConfig().updated({f"{kind}_rate": 1}))
        assert {faults.roll() for _ in range(100)} == {kind}
    assert {Faults(FaultConfig()).roll() for _ in range(100)} == {None}


def test_retry_after_formats() -> None:
    faults = Faults(FaultConfig(retry_after_s=5))
    assert faults.retry_after(4.2) == "5"
    faults.configure({"retry_after_format": "http-date"})
    retry_at = parsedate_to_datetime(faults.retry_after(30)).timestamp()
    assert 30 <= retry_at - time.time() <= 31.5


def test_tokens_look_like_the_reference() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(re.fullmatch(r"[0-9a-f]{14}\.[0-9a-f]{40}", token) for token in tokens)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://app.example/cb", "https://app.example/cb?okt=T"),
        ("https://app.example/cb?a=1&b=x%20y", "https://app.example/cb?a=1&b=x%20y&okt=T"),
        ("https://app.example/cb?a=1#frag", "https://app.example/cb?a=1&okt=T#frag"),
        ("http://127.0.0.1:9/v1/callback/f?", "http://127.0.0.1:9/v1/callback/f?okt=T"),
    ],
)
def test_callback_query_is_kept_byte_for_byte(url: str, expected: str) -> None:
    assert add_query_param(url, "okt", "T") == expected


def test_account_consent_verify_complete_and_expiry() -> None:
    clock = FakeClock()
    account = Account(token_ttl_s=300, clock=clock)
    request = account.request_authorization("LinkedIn", "page", "https://app.example/cb")
    with pytest.raises(UnknownRequest):
        account.decide("nope", APPROVE)
    location = account.decide(request.id, APPROVE)
    assert account.decide(request.id, APPROVE) == location
    with pytest.raises(DecisionConflict):
        account.decide(request.id, DENY)
    token = location.rsplit("okt=", 1)[1]

    offered = account.verify(token).entities
    assert account.connections() == []  # listing pages connects nothing
    with pytest.raises(UnknownEntity) as unknown:
        account.complete(token, [offered[0].id, "999"])
    assert unknown.value.entity_id == "999"
    assert account.connections() == []
    connected = account.complete(token, [offered[1].id])
    again = account.complete(token, [offered[1].id])
    assert [c.id for c in again] == [c.id for c in connected]
    assert account.connections()[0].calls == 2

    clock.now += 300
    with pytest.raises(TokenInvalid):
        account.verify(token)
    with pytest.raises(TokenInvalid):
        account.complete(token, [offered[1].id])


def test_an_account_forgets_expired_tokens_and_old_requests_as_it_runs() -> None:
    """A sandbox running for months holds only the recent requests and live tokens; the answers are
    the ones an expired token or an unknown request always got."""
    clock = FakeClock()
    account = Account(token_ttl_s=300, clock=clock)
    approved = [
        account.request_authorization("LinkedIn", "profile", "https://app.example/cb") for _ in range(50)
    ]
    tokens = [account.decide(request.id, APPROVE).rsplit("okt=", 1)[1] for request in approved]
    clock.now += 301
    account.request_authorization("LinkedIn", "profile", "https://app.example/cb")  # a later flow
    assert len(account._grants) == 0
    assert len(account._requests) == 51  # a request is kept for a week, its page may still be opened
    with pytest.raises(TokenInvalid):
        account.verify(tokens[0])
    clock.now += REQUEST_LIFETIME_S
    fresh = account.request_authorization("LinkedIn", "profile", "https://app.example/cb")
    assert list(account._requests) == [fresh.id]
    with pytest.raises(UnknownRequest):
        account.decide(approved[0].id, APPROVE)
    token = account.decide(fresh.id, APPROVE).rsplit("okt=", 1)[1]
    assert account.verify(token).profile is not None


def test_profile_tokens_connect_on_verify_and_cannot_select() -> None:
    account = Account(token_ttl_s=300)
    request = account.request_authorization("YouTube", "profile", "https://app.example/cb")
    token = account.decide(request.id, APPROVE).rsplit("okt=", 1)[1]
    first = account.verify(token).profile
    assert first is not None
    assert first.entity.network == "YouTube"
    assert account.verify(token).profile is first
    assert first.calls == 2
    with pytest.raises(NotSelectable):
        account.complete(token, ["1"])


def test_denied_requests_send_error_and_no_token() -> None:
    account = Account(token_ttl_s=300)
    request = account.request_authorization("Twitter", "profile", "https://app.example/cb?x=1")
    assert account.decide(request.id, DENY) == "https://app.example/cb?x=1&error=access_denied"
    assert request.token is None


def test_every_network_offers_at_least_three_pages_and_groups_the_first_connected() -> None:
    seen: set[str] = set()
    for network in NETWORKS:
        for entity_type in ENTITY_TYPES[1:]:
            entities = selectable_entities(network, entity_type)
            assert len(entities) >= 3
            assert [e.is_connected for e in entities] == [True] + [False] * (len(entities) - 1)
            assert all(e.network == network and e.id.isdigit() for e in entities)
            ids = {e.id for e in entities}
            assert not ids & seen  # a credential id names one entity
            seen |= ids


def test_daily_limit_refuses_past_n_until_midnight_utc() -> None:
    clock = FakeClock()
    clock.now = 1_700_000_000.0 - 1_700_000_000.0 % 86400 + 86400 - 100  # 100 s before a UTC midnight
    daily = DailyLimit(2, wall_clock=clock)
    for _ in range(2):
        assert daily.check().allowed
        daily.count()
    refused = daily.check()
    assert (refused.allowed, refused.retry_after_s) == (False, 100)
    clock.now += 99.5
    assert daily.check().retry_after_s == 1
    clock.now += 0.5  # midnight: a new day, a new count
    assert daily.check().allowed


def test_refused_calls_do_not_use_the_daily_count() -> None:
    daily = DailyLimit(1)
    for _ in range(5):
        assert daily.check().allowed  # looked at, never counted
    daily.count()
    assert not daily.check().allowed


def test_every_error_shape_carries_result_false_and_the_status() -> None:
    missing = param_refusal({"network": "Missing value for parameter network"})
    expired = Refusal(404, "Token is invalid or has expired")
    assert expired.errors("object") == {"API": {"Error": "Token is invalid or has expired"}}
    assert missing.errors("object") == {"Param": {"network": "Missing value for parameter network"}}
    assert expired.errors("list") == missing.errors("list") == []
    assert expired.errors("param") == {"Param": {"get": "Token is invalid or has expired"}}
    assert missing.errors("param") == {"Param": {"get": "Missing value for parameter network"}}
    for shape in ("object", "list", "param"):
        response = missing.response(shape)
        assert response.status == 400
        assert response.body.startswith(b'{"Result":false,"Errors":')


def test_invalid_rate_decides_each_connection_and_is_validated() -> None:
    assert {Faults(FaultConfig(invalid_rate=1.0)).credential_status() for _ in range(50)} == {"invalid"}
    assert {Faults(FaultConfig()).credential_status() for _ in range(50)} == {"valid"}
    halves = Faults(FaultConfig(invalid_rate=0.5, seed=3))
    statuses = [halves.credential_status() for _ in range(2000)]
    assert 0.45 < statuses.count("invalid") / 2000 < 0.55
    for bad in (1.5, -0.1, "x", True):
        with pytest.raises(FaultConfigError) as refused:
            FaultConfig().updated({"invalid_rate": bad})
        assert refused.value.field == "invalid_rate"


def test_a_null_retry_after_leaves_the_header_out() -> None:
    faults = Faults(FaultConfig())
    assert faults.retry_after_headers(3) == (("retry-after", "3"),)
    assert faults.configure({"retry_after_s": None}).retry_after_s is None
    assert faults.retry_after_headers(3) == ()
    with pytest.raises(FaultConfigError):
        faults.configure({"error_shape": "xml"})


def test_a_repeated_verify_answers_the_status_its_token_connected_with() -> None:
    statuses = iter(["invalid", "valid"])
    account = Account(token_ttl_s=300, credential_status=lambda: next(statuses))
    request = account.request_authorization("LinkedIn", "page", "https://app.example/cb")
    token = account.decide(request.id, APPROVE).rsplit("okt=", 1)[1]
    entity = account.verify(token).entities[1]
    assert [c.status for c in account.complete(token, [entity.id])] == ["invalid"]
    assert [c.status for c in account.complete(token, [entity.id])] == ["invalid"]  # the same again
    again = account.request_authorization("LinkedIn", "page", "https://app.example/cb")
    second = account.decide(again.id, APPROVE).rsplit("okt=", 1)[1]
    assert [c.status for c in account.complete(second, [entity.id])] == ["valid"]  # reconnected
    assert account.connections()[0].status == "valid"
