"""A health check on fakeredis (the real Lua steps) against a scripted Oktopost: it takes calls only from
spare budget and within its share, reads a connection the listing left out before calling it deleted,
and a failed check changes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import httpx
import pytest

from worker.connections.checks import CheckOutcome, CheckSettings, ConnectionChecker
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
