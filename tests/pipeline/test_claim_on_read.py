"""FlowStore.claim_on_read (scripts/callback_claim.lua): a callback's read and claim in one Redis call.

It claims exactly as `claim_callback` does when the flow awaits its callback, in time, and needs no
confirmation, and otherwise changes nothing and answers the flow as read. Each test runs on fakeredis
(fast) and on a real redis-server, whose Lua (cjson, string handling) is the one production runs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis

from tests.support.commands import commands_sent
from tests.support.stack import RedisServer
from worker.config.tenants import DEFAULT_TENANT
from worker.flows.flow import BrowserUI, Flow, FlowState, Lifetimes, token_fingerprint
from worker.flows.store import FlowStore, StartBinding
from worker.flows.transition import TransitionOutcome
from worker.keys import RedisNames

TOKEN = "591c6053d81978." + "7" * 40
OTHER_TOKEN = "591c6053d81978." + "8" * 40
WARM_UP_TOKEN = "591c6053d81978." + "9" * 40
START_COOKIE = "start-cookie-value"
REFERENCE = 'crm/42 ü "quoted"'  # a slash, a non-ASCII letter and quotes, as a caller may send


@pytest.fixture(params=["fakeredis", pytest.param("redis-server", marks=pytest.mark.integration)])
def client(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "fakeredis":
        yield fakeredis.FakeRedis()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    real = redis.Redis.from_url(server.url)
    yield real
    real.flushdb()
    real.close()


def _store(client: Any) -> FlowStore:
    return FlowStore(client, RedisNames(f"cor{uuid.uuid4().hex[:8]}"), Lifetimes(), default_account="acct-0")


def _new(
    store: FlowStore, *, ui: BrowserUI = BrowserUI.HOSTED, tenant: str = DEFAULT_TENANT, account: str = ""
) -> Flow:
    flow_id = uuid.uuid4().hex + "0" * 8
    return store.create(
        flow_id, "LinkedIn", "page", REFERENCE, None, ui, tenant=tenant, account=account or None
    )


def _claim(store: FlowStore, flow: Flow, token: str = TOKEN, **terms: Any) -> tuple[Flow | None, Any]:
    options: dict[str, Any] = {"browser_fp": "browser-fp", "start_fp": "", "tenants_requiring_start": ()}
    options.update(terms)
    return store.claim_on_read(flow.flow_id, token, None, **options)


def test_a_callback_is_read_and_claimed_in_one_call_as_claim_callback_claims(client: Any) -> None:
    store = _store(client)
    fused, separate = _new(store, tenant="acme"), _new(store, tenant="acme")
    _claim(store, _new(store), WARM_UP_TOKEN)  # the script loaded once
    with commands_sent(client) as sent:
        read, claim = _claim(store, fused)
    assert sent == ["EVALSHA"]
    assert read == fused  # the flow as it was read, before its claim
    assert claim is not None
    assert claim.done
    assert claim.state is FlowState.VERIFYING
    assert store.claim_callback(separate, OTHER_TOKEN, browser_fp="browser-fp").done

    claimed, other = store.get(fused.flow_id), store.get(separate.flow_id)
    assert claimed is not None
    assert other is not None
    assert claimed.state is other.state is FlowState.VERIFYING
    assert claimed.token_fp == token_fingerprint(TOKEN)
    assert claimed.browser_fp == other.browser_fp == "browser-fp"
    assert claimed.seq == other.seq == 2
    assert store.token(fused.flow_id) == TOKEN
    event, expected = store.events(fused.flow_id)[-1], store.events(separate.flow_id)[-1]
    assert event["type"] == "callback.received"
    assert event["seq"] == 2
    mine = {key: event[key] for key in ("network", "entity_type", "reference", "tenant")}
    assert mine == {"network": "LinkedIn", "entity_type": "page", "reference": REFERENCE, "tenant": "acme"}
    assert set(event) == set(expected)
    assert set(event["data"]) == set(expected["data"])
    assert json.loads(client.xrange(store.names.all_events_stream)[-2][1][b"event"]) == event
    assert client.zscore(store.names.leases, fused.flow_id) is not None
    assert client.get(store.names.token_claim(token_fingerprint(TOKEN))) == fused.flow_id.encode()


def test_the_flows_account_names_its_reserved_calls_and_its_parked_flows(client: Any) -> None:
    store = _store(client)
    flow = _new(store, account="acct-7")
    parked = store.names.account("acct-7").parked_flows
    client.zadd(parked, {"an-earlier-flow": 1.0})
    reserved_before = int(client.get(store.names.account("acct-7").reserved_calls) or 0)
    _, claim = _claim(store, flow)
    assert claim is not None
    assert claim.done
    assert client.zscore(parked, flow.flow_id) is not None  # joined the account's parked flows
    assert client.zscore(store.names.leases, flow.flow_id) is None
    assert client.zscore(store.names.parked_accounts, parked) is not None
    assert client.get(store.names.account("acct-0").reserved_calls) is None
    assert int(client.get(store.names.account("acct-7").reserved_calls)) == reserved_before


def test_a_redirect_flow_keeps_no_browser_fingerprint(client: Any) -> None:
    store = _store(client)
    flow = _new(store, ui=BrowserUI.REDIRECT)
    _, claim = _claim(store, flow)
    assert claim is not None
    assert claim.done
    claimed = store.get(flow.flow_id)
    assert claimed is not None
    assert claimed.browser_fp == ""


def test_a_token_claims_one_flow(client: Any) -> None:
    store = _store(client)
    first, second = _new(store), _new(store)
    assert _claim(store, first)[1].done
    read, claim = _claim(store, second)
    assert read == second
    assert claim is not None
    assert claim.outcome is TransitionOutcome.TOKEN_IN_USE
    assert store.get(second.flow_id) == second


def test_no_such_flow(client: Any) -> None:
    store = _store(client)
    assert store.claim_on_read(
        "f" * 40, TOKEN, None, browser_fp="", start_fp="", tenants_requiring_start=()
    ) == (
        None,
        None,
    )


def _unchanged(store: FlowStore, flow: Flow, **terms: Any) -> None:
    read, claim = _claim(store, flow, **terms)
    assert claim is None
    assert read == store.get(flow.flow_id)
    assert read is not None
    assert read.state is flow.state
    assert store.token(flow.flow_id) is None or read.state is not FlowState.AWAITING_CALLBACK


def test_a_flow_no_longer_awaiting_its_callback_is_only_read(client: Any) -> None:
    store = _store(client)
    flow = _new(store)
    assert _claim(store, flow)[1].done
    read, claim = _claim(store, flow)  # the repeat: the route answers it from the flow as read
    assert claim is None
    assert read is not None
    assert read.state is FlowState.VERIFYING
    assert [event["type"] for event in store.events(flow.flow_id)] == [
        "authorization.started",
        "callback.received",
    ]


def test_a_flow_past_its_deadline_is_only_read(client: Any) -> None:
    store = _store(client)
    flow = _new(store)
    client.hset(store.names.flow_state(flow.flow_id), "deadline", repr(store.clock.now() - 1))
    _unchanged(store, flow)


def test_a_flow_bound_to_its_start_browser_is_claimed_only_from_that_browser(client: Any) -> None:
    store = _store(client)
    flow = _new(store)
    assert store.bind_start(flow.flow_id, token_fingerprint(START_COOKIE)) is StartBinding.BOUND
    _unchanged(store, flow)  # no start cookie
    _unchanged(store, flow, start_fp=token_fingerprint("another browser's cookie"))
    _, claim = _claim(store, flow, start_fp=token_fingerprint(START_COOKIE))
    assert claim is not None
    assert claim.done


def test_a_tenant_requiring_the_start_url_sends_an_unbound_flow_to_confirmation(client: Any) -> None:
    store = _store(client)
    flow = _new(store, tenant="strict")
    _unchanged(store, flow, tenants_requiring_start=("other", "strict"))
    _, claim = _claim(store, flow, tenants_requiring_start=("other",))
    assert claim is not None
    assert claim.done
