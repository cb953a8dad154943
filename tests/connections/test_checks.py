"""A health check on fakeredis (the real Lua steps) against a scripted Oktopost: it takes calls only from
spare budget and within its share, reads a connection the listing left out before calling it deleted,
and a failed check changes nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import httpx
import pytest

from worker.connections.checks import CheckLoop, CheckOutcome, CheckSettings, ConnectionChecker
from worker.connections.records import ConnectionStore
from worker.events import ConnectedCredential
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.oktopost import OktopostClient
from worker.upstream.budget import UpstreamBudget
from worker.upstream.clients import Upstream

NAMES = RedisNames("okt")
ACCOUNT = "demo-account"
Answer = Callable[[httpx.Request], httpx.Response]


def credential(credential_id: str, status: str) -> dict[str, Any]:
    return {"Id": credential_id, "Name": "Acme", "Status": status, "Network": "LinkedIn"}


class Setup:
    def __init__(self, answer: Answer, *, limit: int = 10) -> None:
        self.redis: Any = fakeredis.FakeRedis()
        self.flows = FlowStore(self.redis, NAMES, Lifetimes())
        self.connections = ConnectionStore(self.redis, NAMES, 86400)
        self.budget = UpstreamBudget(self.redis, NAMES.account(ACCOUNT), limit=limit, period=1.0)
        self.calls: list[str] = []

        def recorded(request: httpx.Request) -> httpx.Response:
            self.calls.append(f"{request.method} {request.url.path}")
            return answer(request)

        client = OktopostClient(
            "http://oktopost.test", ACCOUNT, "key", transport=httpx.MockTransport(recorded)
        )
        self.upstream = Upstream(ACCOUNT, client, self.budget)
        self.checker = ConnectionChecker(
            self.connections, lambda _: self.upstream, CheckSettings(period=0.01, share=0.1), sleep=time.sleep
        )

    def connect(self, credential_id: str, reference: str = "user-1") -> None:
        flow_id = f"flow-{credential_id}".ljust(20, "x")
        flow = self.flows.create(flow_id, "LinkedIn", "profile", reference, None)
        assert self.flows.claim_callback(flow, f"okt-token-{credential_id}").done
        self.flows.take_work(flow_id, "task", FlowState.VERIFYING)
        taken = self.flows.get(flow_id)
        assert taken is not None
        made = ConnectedCredential(id=credential_id, name="Acme", status="valid", network="LinkedIn")
        assert self.flows.complete(taken, [made], "task").done
        time.sleep(0.002)  # the check that follows begins after this connection was made

    def lifecycle(self) -> list[tuple[str, str]]:
        events = [json.loads(f[b"event"]) for _, f in self.redis.xrange(NAMES.all_events_stream)]
        return [(e["type"], e["connection_id"]) for e in events if "connection_id" in e]


def listing(*items: dict[str, Any], missing: Answer | None = None) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/credential":
            return httpx.Response(200, json={"Result": True, "Items": list(items), "Total": len(items)})
        if missing is not None:
            return missing(request)
        return httpx.Response(
            404, json={"Result": False, "Errors": {"API": {"Error": "Credential not found"}}}
        )

    return answer


def test_a_check_reports_each_change_once_and_confirms_a_missing_one_by_id() -> None:
    def present(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"Result": True, "Credential": credential("003-2", "valid")})

    setup = Setup(listing(credential("003-1", "invalid"), missing=present))
    setup.connect("003-1")
    setup.connect("003-2")  # left out of the listing, but Oktopost still has it
    assert setup.checker.check(setup.upstream) is CheckOutcome.OK
    assert setup.lifecycle() == [("connection.invalid", "003-1")]
    assert setup.calls == ["GET /v2/credential", "GET /v2/credential/003-2"]
    assert setup.connections.get("default", "003-2").checked_at is not None  # type: ignore[union-attr]
    time.sleep(1.1)  # the checks' share of 10 calls a second: one call a second
    assert setup.checker.check(setup.upstream) is CheckOutcome.OK
    assert setup.lifecycle() == [("connection.invalid", "003-1")]


def test_a_shorter_period_applies_to_a_check_due_under_a_longer_one() -> None:
    """CONNECTION_CHECK_SECONDS lowered by a restart: the next check comes a new period later at the
    latest, not when the old period would have ended."""
    setup = Setup(listing(credential("003-1", "valid")))
    setup.connect("003-1")

    def checker(period: float) -> ConnectionChecker:
        settings = CheckSettings(period=period, share=0.1)
        return ConnectionChecker(setup.connections, lambda _: setup.upstream, settings, sleep=time.sleep)

    hourly, quick = checker(3600), checker(1.2)
    assert hourly.check(setup.upstream) is CheckOutcome.OK
    assert hourly.check(setup.upstream) is CheckOutcome.SKIPPED
    assert quick.check(setup.upstream) is CheckOutcome.SKIPPED  # due 1.2 s from now at the latest
    time.sleep(1.3)
    assert hourly.check(setup.upstream) is CheckOutcome.OK  # whichever process looks first
    assert quick.check(setup.upstream) is CheckOutcome.SKIPPED
    assert setup.calls == ["GET /v2/credential"] * 2


def test_a_check_reads_valid_in_any_case_as_valid() -> None:
    def present(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"Result": True, "Credential": credential("003-2", "VALID")})

    setup = Setup(listing(credential("003-1", "Valid"), missing=present))
    setup.connect("003-1")
    setup.connect("003-2")  # read by id
    assert setup.checker.check(setup.upstream) is CheckOutcome.OK
    assert setup.lifecycle() == []
    assert [setup.connections.get("default", c).status for c in ("003-1", "003-2")] == ["valid", "valid"]  # type: ignore[union-attr]


def test_a_connection_oktopost_no_longer_has_is_deleted_upstream() -> None:
    setup = Setup(listing())
    setup.connect("003-1")
    assert setup.checker.check(setup.upstream) is CheckOutcome.OK
    assert setup.lifecycle() == [("connection.deleted", "003-1")]
    assert setup.connections.get("default", "003-1") is None


@pytest.mark.parametrize(
    "answer",
    [
        lambda _: httpx.Response(503, json={"Result": False, "Errors": []}),
        lambda _: httpx.Response(200, text="<html>not json</html>"),
        lambda _: httpx.Response(200, json={"Result": False, "Errors": []}),
        lambda _: httpx.Response(429, headers={"Retry-After": "1"}, json={"Result": False, "Errors": []}),
    ],
    ids=["503", "malformed", "refused", "429"],
)
def test_a_failed_check_changes_nothing(answer: Answer) -> None:
    setup = Setup(answer)
    setup.connect("003-1")
    before = setup.connections.get("default", "003-1")
    assert setup.checker.check(setup.upstream) is CheckOutcome.FAILED
    assert setup.connections.get("default", "003-1") == before
    assert setup.lifecycle() == []


def test_a_check_waits_behind_a_waiting_flow_and_within_its_share() -> None:
    setup = Setup(listing(credential("003-1", "valid")))
    setup.connect("003-1")
    names = NAMES.account(ACCOUNT)
    setup.redis.zadd(names.budget_alive, {"a-flow-waiting": time.time() + 3600})  # a flow asks for budget
    setup.checker.settings = CheckSettings(period=0.01, share=0.1)
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("worker.connections.checks.GIVE_UP_SECONDS", 0.5)
        assert setup.checker.check(setup.upstream) is CheckOutcome.FAILED
    assert time.monotonic() - started >= 0.4
    assert setup.calls == []  # no call while a flow waited
    setup.redis.delete(names.budget_alive)
    time.sleep(0.02)
    assert setup.checker.check(setup.upstream) is CheckOutcome.OK
    assert setup.calls == ["GET /v2/credential"]
    assert int(setup.redis.zcard(names.budget_window)) == 1  # counted in the account's window like any call


@pytest.mark.parametrize(("limit", "share"), [(10, 1.0), (1, 0.1), (2, 0.5)])
def test_a_check_is_granted_when_its_share_is_the_whole_rate_or_the_rate_one_call(
    limit: int, share: float
) -> None:
    setup = Setup(listing(credential("005-1", "valid")), limit=limit)
    setup.connect("005-1")
    setup.checker.settings = CheckSettings(period=0.01, share=share)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("worker.connections.checks.GIVE_UP_SECONDS", 2.0)
        assert setup.checker.check(setup.upstream) is CheckOutcome.OK
    assert setup.calls == ["GET /v2/credential"]


def test_an_account_of_one_call_a_period_is_checked_only_while_no_flow_holds_that_call() -> None:
    setup = Setup(listing(credential("006-1", "valid")), limit=1)
    setup.connect("006-1")
    window = NAMES.account(ACCOUNT).budget_window
    setup.redis.zadd(window, {"a-flow-call": time.time() + 3600})  # a flow's call in flight
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("worker.connections.checks.GIVE_UP_SECONDS", 0.3)
        assert setup.checker.check(setup.upstream) is CheckOutcome.FAILED
    assert setup.calls == []
    setup.redis.delete(window)
    time.sleep(0.02)  # the next check is due
    assert setup.checker.check(setup.upstream) is CheckOutcome.OK
    assert setup.calls == ["GET /v2/credential"]


def test_an_accounts_check_that_waits_holds_back_no_other_accounts_check() -> None:
    """Each account's check runs in a thread of its own: while one account's check hangs on its call (as
    one waiting minutes for spare budget does), another account's change is still seen at its period."""
    redis_client: Any = fakeredis.FakeRedis()
    flows = FlowStore(redis_client, NAMES, Lifetimes())
    connections = ConnectionStore(redis_client, NAMES, 86400)
    entered, release = threading.Event(), threading.Event()
    fast_status = {"fast-1": "valid"}

    def slow(_: httpx.Request) -> httpx.Response:
        entered.set()
        release.wait(10)
        return httpx.Response(200, json={"Result": True, "Items": [], "Total": 0})

    def fast(_: httpx.Request) -> httpx.Response:
        items = [credential(key, value) for key, value in fast_status.items()]
        return httpx.Response(200, json={"Result": True, "Items": items, "Total": len(items)})

    upstreams = {}
    for account, answer in (("slow-account", slow), ("fast-account", fast)):
        client = OktopostClient("http://oktopost.test", account, "key", transport=httpx.MockTransport(answer))
        budget = UpstreamBudget(redis_client, NAMES.account(account), limit=100, period=1.0)
        upstreams[account] = Upstream(account, client, budget)
    for account, credential_id in (("slow-account", "slow-1"), ("fast-account", "fast-1")):
        flow = flows.create(
            f"flow-{credential_id}".ljust(20, "x"), "LinkedIn", "profile", None, None, account=account
        )
        assert flows.claim_callback(flow, f"okt-token-{credential_id}").done
        flows.take_work(flow.flow_id, "task", FlowState.VERIFYING)
        made = ConnectedCredential(id=credential_id, name="Acme", status="valid", network="LinkedIn")
        assert flows.complete(flows.get(flow.flow_id), [made], "task").done  # type: ignore[arg-type]
    checker = ConnectionChecker(connections, upstreams.get, CheckSettings(period=0.2, share=1.0))
    loop = CheckLoop(checker, lambda _tenant, _connection: None, tick=0.05)
    loop.start()
    try:
        assert entered.wait(5), "the slow account's check never called"
        fast_status["fast-1"] = "invalid"  # while the slow account's check hangs
        seen_by = time.monotonic() + 3
        while _statuses(redis_client).get("fast-1") != "invalid" and time.monotonic() < seen_by:
            time.sleep(0.05)
        assert _statuses(redis_client).get("fast-1") == "invalid"
        assert not release.is_set()  # the slow check was still under way
    finally:
        release.set()
        loop.stop()


def _statuses(redis_client: Any) -> dict[str, str]:
    events = [json.loads(f[b"event"]) for _, f in redis_client.xrange(NAMES.all_events_stream)]
    seen: dict[str, str] = {}
    for event in events:
        if event["type"] == "connection.invalid":
            seen[event["connection_id"]] = "invalid"
    return seen
