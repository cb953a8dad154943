"""Connections as flows make them, on fakeredis (the Lua steps are the real ones): one connection per
credential gathering references, a status change reported once with its event, pages that list each
connection once while others come and go, and a deletion that happens once."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest

from worker.connections.records import ConnectionStore, DeleteAsked, InvalidCursor
from worker.events import ConnectedCredential, parse_event
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames

NAMES = RedisNames("okt")


@pytest.fixture
def stores() -> tuple[FlowStore, ConnectionStore]:
    client = fakeredis.FakeRedis()
    return FlowStore(client, NAMES, Lifetimes()), ConnectionStore(client, NAMES, 86400)


def complete(store: FlowStore, flow_id: str, reference: str | None, credential: str, status: str) -> None:
    flow = store.create(flow_id, "LinkedIn", "page", reference, None)
    assert store.claim_callback(flow, f"okt-token-{flow_id}").done
    store.take_work(flow_id, "task", FlowState.VERIFYING)
    taken = store.get(flow_id)
    assert taken is not None
    made = ConnectedCredential(id=credential, name="Acme", status=status, network="LinkedIn")
    assert store.complete(taken, [made], "task").done


def lifecycle(store: FlowStore) -> list[dict[str, Any]]:
    events = [fields[b"event"] for _, fields in store.redis.xrange(NAMES.all_events_stream)]
    return [
        json.loads(raw)
        for raw in events
        if parse_event(raw).type.startswith("connection.")
        and json.loads(raw)["type"] != "connection.completed"
    ]


def test_one_connection_per_credential_gathers_references(stores: tuple[FlowStore, ConnectionStore]) -> None:
    flows, connections = stores
    complete(flows, "flow-a" * 3, "user-1", "003-1", "valid")
    complete(flows, "flow-b" * 3, "user-2", "003-1", "valid")
    complete(flows, "flow-c" * 3, None, "003-1", "valid")
    connection = connections.get("default", "003-1")
    assert connection is not None
    assert connection.references == ["user-1", "user-2"]
    assert connection.flow_id == "flow-c" * 3
    assert connection.checked_at is None
    assert connections.members("demo-account") == [("default", "003-1")]
    assert lifecycle(flows) == []  # connecting again with the same status changes nothing


def test_a_reconnect_that_makes_it_valid_is_one_recovered_event(
    stores: tuple[FlowStore, ConnectionStore],
) -> None:
    flows, connections = stores
    complete(flows, "flow-a" * 3, "user-1", "003-1", "invalid")
    complete(flows, "flow-b" * 3, "user-1", "003-1", "valid")
    [recovered] = lifecycle(flows)
    assert connections.counts() == {("demo-account", "valid"): 1, ("demo-account", "invalid"): 0}
    assert recovered["type"] == "connection.recovered"
    assert recovered["connection_id"] == "003-1"
    assert recovered["reference"] == "user-1"
    assert "flow_id" not in recovered
    assert "seq" not in recovered
    assert recovered["data"]["connection"] == connections.get("default", "003-1").model_dump()  # type: ignore[union-attr]
    assert not any(name.startswith("_") for name in recovered["data"]["connection"])


def test_pages_list_each_connection_once_while_others_come_and_go(
    stores: tuple[FlowStore, ConnectionStore],
) -> None:
    flows, connections = stores
    for n in range(5):
        complete(flows, f"flow-{n}" * 4, "user-1", f"003-{n}", "valid")
    first = connections.page("default", 2)
    assert [c.id for c in first.connections] == ["003-0", "003-1"]
    complete(flows, "flow-z" * 4, "user-1", "003-00", "valid")  # sorts before the cursor: not listed now
    assert connections.ask_delete("default", "003-2") is DeleteAsked.ASKED
    assert connections.deleted("default", "003-2", "demo-account")
    rest = connections.page("default", 10, first.next_cursor)
    assert [c.id for c in rest.connections] == ["003-3", "003-4"]
    assert rest.next_cursor is None
    with pytest.raises(InvalidCursor):
        connections.page("default", 2, "not a cursor")


def test_a_deletion_is_asked_once_and_done_once(stores: tuple[FlowStore, ConnectionStore]) -> None:
    flows, connections = stores
    complete(flows, "flow-a" * 3, "user-1", "003-1", "valid")
    assert connections.ask_delete("default", "003-1") is DeleteAsked.ASKED
    assert connections.ask_delete("default", "003-1") is DeleteAsked.DELETING
    assert connections.deleted("default", "003-1", "demo-account") is True
    assert connections.deleted("default", "003-1", "demo-account") is False
    assert connections.ask_delete("default", "003-1") is DeleteAsked.MISSING
    [deleted] = lifecycle(flows)
    assert (deleted["type"], deleted["data"]["reason"]) == ("connection.deleted", "requested")
    assert connections.members("demo-account") == []
    assert connections.counts() == {("demo-account", "valid"): 0}


@pytest.mark.parametrize("spelled", ["Valid", "VALID"])
def test_a_credential_valid_in_another_case_is_a_valid_connection(
    stores: tuple[FlowStore, ConnectionStore], spelled: str
) -> None:
    flows, connections = stores
    complete(flows, "flow-a" * 3, "user-1", "003-1", spelled)
    connection = connections.get("default", "003-1")
    assert connection is not None
    assert connection.status == "valid"
    complete(flows, "flow-b" * 3, "user-1", "003-1", "Invalid")
    [broken] = lifecycle(flows)
    assert broken["type"] == "connection.invalid"
    assert connections.counts() == {("demo-account", "valid"): 0, ("demo-account", "invalid"): 1}
