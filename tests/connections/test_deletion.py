"""A caller's deletion of a connection against a scripted Oktopost, on fakeredis (the Lua steps are the real
ones): done once, and called off by a flow that connects the credential again before the DELETE is sent.
When the flow's call and the DELETE cross, the connection stays for the next health check to settle."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import fakeredis
import httpx
import pytest

from worker.connections.deletion import ConnectionDeleter, Deletion
from worker.connections.records import ConnectionStore, DeleteAsked
from worker.events import ConnectedCredential
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.oktopost import OktopostClient
from worker.upstream.budget import UpstreamBudget
from worker.upstream.clients import Upstream

NAMES = RedisNames("okt")
ACCOUNT = "demo-account"
CREDENTIAL = "003-1"


class Setup:
    def __init__(self) -> None:
        self.redis: Any = fakeredis.FakeRedis()
        self.flows = FlowStore(self.redis, NAMES, Lifetimes())
        self.connections = ConnectionStore(self.redis, NAMES, 86400)
        self.deletes: list[str] = []
        self.during_delete: Callable[[], None] = lambda: None
        client = OktopostClient(
            "http://oktopost.test", ACCOUNT, "key", transport=httpx.MockTransport(self.answer)
        )
        budget = UpstreamBudget(self.redis, NAMES.account(ACCOUNT), limit=10, period=1.0)
        self.upstream = Upstream(ACCOUNT, client, budget)
        self.deleter = ConnectionDeleter(self.connections, lambda _: self.upstream)

    def answer(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "DELETE"
        self.deletes.append(request.url.path)
        self.during_delete()
        return httpx.Response(200, json={"Result": True})

    def connect(self, flow_id: str) -> None:
        flow = self.flows.create(flow_id.ljust(20, "x"), "LinkedIn", "page", "user-1", None)
        assert self.flows.claim_callback(flow, f"okt-token-{flow_id}").done
        self.flows.take_work(flow.flow_id, "task", FlowState.VERIFYING)
        taken = self.flows.get(flow.flow_id)
        assert taken is not None
        made = ConnectedCredential(id=CREDENTIAL, name="Acme", status="valid", network="LinkedIn")
        assert self.flows.complete(taken, [made], "task").done

    def deleted_events(self) -> list[str]:
        events = [json.loads(fields[b"event"]) for _, fields in self.redis.xrange(NAMES.all_events_stream)]
        return [event["data"]["reason"] for event in events if event["type"] == "connection.deleted"]

    def listed(self) -> list[str]:
        return [connection.id for connection in self.connections.page("default").connections]


@pytest.fixture
def setup() -> Setup:
    made = Setup()
    made.connect("flow-a")
    assert made.connections.ask_delete("default", CREDENTIAL) is DeleteAsked.ASKED
    return made


def test_a_deletion_calls_oktopost_then_removes_the_connection_once(setup: Setup) -> None:
    assert setup.deleter.delete("default", CREDENTIAL) is Deletion.DELETED
    assert setup.deleter.delete("default", CREDENTIAL) is Deletion.GONE
    assert setup.deletes == [f"/v2/credential/{CREDENTIAL}"]
    assert (setup.listed(), setup.deleted_events()) == ([], ["requested"])


def test_a_flow_connecting_the_credential_again_calls_the_deletion_off(setup: Setup) -> None:
    setup.connect("flow-b")
    assert not setup.connections.deleting("default", CREDENTIAL)
    assert setup.redis.zcard(NAMES.connections_deleting) == 0  # no task is queued again for it
    assert setup.deleter.delete("default", CREDENTIAL) is Deletion.GONE
    assert (setup.deletes, setup.listed(), setup.deleted_events()) == ([], [CREDENTIAL], [])


def test_a_flow_that_connects_it_while_the_deletion_waits_for_budget_calls_it_off(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    granted = setup.upstream.budget.call

    @contextmanager
    def slow_grant(*args: Any, **kwargs: Any) -> Iterator[None]:
        with granted(*args, **kwargs):
            setup.connect("flow-b")  # the user connects it again while the task waits for its slot
            yield

    monkeypatch.setattr(setup.upstream.budget, "call", slow_grant)
    assert setup.deleter.delete("default", CREDENTIAL) is Deletion.GONE
    assert (setup.deletes, setup.listed(), setup.deleted_events()) == ([], [CREDENTIAL], [])


def test_a_flow_whose_connection_crosses_the_delete_keeps_the_connection(setup: Setup) -> None:
    """Oktopost may have taken the flow's call after the DELETE: the connection stays (a health check that
    finds it gone upstream ends it), rather than being removed while Oktopost holds it."""
    setup.during_delete = lambda: setup.connect("flow-b")
    assert setup.deleter.delete("default", CREDENTIAL) is Deletion.GONE
    assert setup.deletes == [f"/v2/credential/{CREDENTIAL}"]
    assert (setup.listed(), setup.deleted_events()) == ([CREDENTIAL], [])
    record = setup.connections.record("default", CREDENTIAL)
    assert record is not None
    assert record["flow_id"].startswith("flow-b")
