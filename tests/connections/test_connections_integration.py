"""Connections against real processes: a sandbox limited to 10 calls a second, a shim and three workers
checking every connection every second. Connections made by flows are listed and paged; a credential
invalidated, removed or reconnected at the sandbox is reported once, whatever the number of workers; a
DELETE removes it at the sandbox; faults during checks change nothing; a burst of flows beside the
checks meets no 429 and the checks keep to their share."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.flows import callback, consent, events_of, start_flow
from tests.support.receivers import Receiver, accepted, register
from tests.support.stack import Pipeline, RedisServer, Sandbox, start_pipeline, start_sandbox
from worker.events import parse_event
from worker.keys import RedisNames

pytestmark = pytest.mark.integration

RATE = 10  # calls a second, at the sandbox and in the pipeline's budget
SHARE = 0.1


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.process.stop()


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer) -> Iterator[tuple[Pipeline, Sandbox]]:
    """Every process stopped with the module, and when a later one fails to start."""
    with contextlib.ExitStack() as started:
        sandbox = start_sandbox("--rate-limit", f"{RATE}/second", "--block-seconds", "5")
        started.callback(sandbox.process.stop)
        pipeline = start_pipeline(
            redis_server.url,
            sandbox.url,
            workers=3,
            oktopost_rate_limit=f"{RATE}/second",
            connection_check_seconds=1,
            connection_check_share=SHARE,
            token_ttl_seconds=20,
            oktopost_timeout_seconds=2,  # a killed worker's check lock lapses within 8 s
            webhook_allowed_hosts="127.0.0.1",
        )
        started.callback(pipeline.stop)
        yield pipeline, sandbox


def wait_until(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def connect(pipeline: Pipeline, reference: str, network: str = "LinkedIn", as_profile: str = "") -> str:
    """One profile flow end to end; the credential id it connected."""
    flow = start_flow(pipeline, network, reference=reference, return_url=None, ui="redirect")
    return finish(pipeline, flow, as_profile)


def finish(pipeline: Pipeline, flow: dict[str, Any], as_profile: str = "") -> str:
    redirect = flow["redirect_url"] + (f"&as={as_profile}" if as_profile else "")
    assert callback(consent(redirect)).status_code == 200
    events = events_of(pipeline, flow["flow_id"])
    assert events[-1]["type"] == "connection.completed", events[-1]
    return str(events[-1]["data"]["credentials"][0]["id"])


def api(pipeline: Pipeline, method: str, path: str, **options: Any) -> httpx.Response:
    return httpx.request(
        method, f"{pipeline.shim_url}{path}", headers=pipeline.headers, timeout=15, **options
    )


def lifecycle(pipeline: Pipeline, connection_id: str, kind: str) -> list[dict[str, Any]]:
    """The `kind` events of a connection on the all-events stream, each checked against the schema."""
    stream = RedisNames(pipeline.prefix).all_events_stream
    found, client = [], redis_of(pipeline)
    for _, fields in client.xrange(stream):
        event = json.loads(fields[b"event"])
        if event["type"] == kind and event.get("connection_id") == connection_id:
            parse_event(fields[b"event"])
            found.append(event)
    return found


def redis_of(pipeline: Pipeline) -> Any:
    """redis-py annotates every command as sync-or-async; this client is sync."""
    return pipeline.redis()


def status_of(pipeline: Pipeline, connection_id: str) -> str | None:
    answer = api(pipeline, "GET", f"/v1/connections/{connection_id}")
    return None if answer.status_code == 404 else str(answer.json()["status"])


def test_connections_are_listed_by_reference_and_paged(stack: tuple[Pipeline, Sandbox]) -> None:
    pipeline, _ = stack
    mine = {connect(pipeline, "user-paged") for _ in range(3)}
    other = connect(pipeline, "user-other")
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(3):
        params: dict[str, Any] = {
            "reference": "user-paged",
            "limit": 2,
            **({"cursor": cursor} if cursor else {}),
        }
        page = api(pipeline, "GET", "/v1/connections", params=params).json()
        seen += [connection["id"] for connection in page["connections"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(mine)
    one = api(pipeline, "GET", f"/v1/connections/{other}").json()
    assert one["references"] == ["user-other"]
    assert (one["status"], one["network"], one["entity_type"]) == ("valid", "LinkedIn", "profile")
    assert api(pipeline, "GET", "/v1/connections", params={"limit": 101}).status_code == 422
    assert api(pipeline, "GET", "/v1/connections", params={"cursor": "%%%"}).status_code == 422
    assert api(pipeline, "GET", "/v1/connections/003-unknown").status_code == 404


def test_an_invalidation_is_reported_once_and_a_reconnect_in_place_recovers_it(
    stack: tuple[Pipeline, Sandbox],
) -> None:
    pipeline, sandbox = stack
    connection_id = connect(pipeline, "user-broken")
    httpx.post(f"{sandbox.url}/_sandbox/credentials/{connection_id}/invalidate").raise_for_status()
    wait_until(lambda: status_of(pipeline, connection_id) == "invalid", what="the check saw it invalid")
    time.sleep(2)  # more checks by the three workers: none reports it again
    [invalid] = lifecycle(pipeline, connection_id, "connection.invalid")
    assert invalid["reference"] == "user-broken"
    assert invalid["data"]["connection"]["status"] == "invalid"

    flow = api(pipeline, "POST", f"/v1/connections/{connection_id}/reconnect", json={"ui": "redirect"})
    assert flow.status_code == 201, flow.text
    started = api(pipeline, "GET", f"/v1/authorizations/{flow.json()['flow_id']}").json()["events"][0]
    assert started["data"]["reconnects"] == connection_id
    assert started["reference"] == "user-broken"
    assert finish(pipeline, flow.json(), as_profile=connection_id.rsplit("-", 1)[1]) == connection_id
    assert status_of(pipeline, connection_id) == "valid"
    time.sleep(1.5)
    assert len(lifecycle(pipeline, connection_id, "connection.recovered")) == 1
    assert len(lifecycle(pipeline, connection_id, "connection.invalid")) == 1


def test_removed_upstream_is_deleted_once_though_a_worker_is_killed(stack: tuple[Pipeline, Sandbox]) -> None:
    pipeline, sandbox = stack
    connection_id = connect(pipeline, "user-removed")
    channel = pipeline.redis().pubsub()
    channel.subscribe(RedisNames(pipeline.prefix).connection_channel(connection_id))
    httpx.post(f"{sandbox.url}/_sandbox/credentials/{connection_id}/remove").raise_for_status()
    pipeline.workers[0].kill()  # SIGKILL, perhaps mid-check: its lock lapses, another worker checks
    wait_until(lambda: status_of(pipeline, connection_id) is None, what="the check saw it gone")
    time.sleep(1.5)
    [deleted] = lifecycle(pipeline, connection_id, "connection.deleted")
    assert deleted["data"]["reason"] == "upstream"
    published = [m for m in iter(lambda: channel.get_message(timeout=0.5), None) if m["type"] == "message"]
    assert [json.loads(m["data"])["type"] for m in published] == ["connection.deleted"]
    channel.close()


def test_delete_removes_it_at_the_sandbox_once_and_the_webhook_says_so(
    stack: tuple[Pipeline, Sandbox], receiver: Receiver
) -> None:
    pipeline, sandbox = stack
    register(pipeline, receiver, "/deleted", ["connection.deleted"])
    connection_id = connect(pipeline, "user-leaving")
    first = api(pipeline, "DELETE", f"/v1/connections/{connection_id}")
    assert (first.status_code, first.json()) == (202, {"id": connection_id, "status": "deleting"})
    assert api(pipeline, "DELETE", f"/v1/connections/{connection_id}").status_code in (202, 404)
    wait_until(lambda: status_of(pipeline, connection_id) is None, what="the deletion")
    assert connection_id not in {c["Id"] for c in sandbox.connections()}
    assert api(pipeline, "DELETE", f"/v1/connections/{connection_id}").status_code == 404
    [deleted] = lifecycle(pipeline, connection_id, "connection.deleted")
    assert deleted["data"]["reason"] == "requested"
    wait_until(lambda: deleted["id"] in accepted(receiver, "/deleted"), what="the webhook delivery")
    assert [json.loads(body)["connection_id"] for body in accepted(receiver, "/deleted").values()] == [
        connection_id
    ]


def test_faults_during_checks_change_nothing(stack: tuple[Pipeline, Sandbox]) -> None:
    pipeline, sandbox = stack
    connection_id = connect(pipeline, "user-faults")
    wait_until(lambda: api(pipeline, "GET", f"/v1/connections/{connection_id}").json()["checked_at"])
    sandbox.set_faults(
        error_rate=0.2, malformed_rate=0.2, reject_rate=0.2, drop_rate=0.2, throttle_rate=0.2, retry_after_s=1
    )
    try:
        httpx.post(f"{sandbox.url}/_sandbox/credentials/{connection_id}/invalidate").raise_for_status()
        time.sleep(0.5)
        before = api(pipeline, "GET", f"/v1/connections/{connection_id}").json()
        time.sleep(2.5)
        after = api(pipeline, "GET", f"/v1/connections/{connection_id}").json()
    finally:
        sandbox.set_faults(error_rate=0, malformed_rate=0, reject_rate=0, drop_rate=0, throttle_rate=0)
    assert after == before
    assert after["status"] == "valid"
    assert lifecycle(pipeline, connection_id, "connection.invalid") == []
    metrics = httpx.get(f"{pipeline.shim_url}/metrics").text
    assert 'okc_connection_checks_total{account="demo-account",outcome="failed"}' in metrics
    wait_until(lambda: status_of(pipeline, connection_id) == "invalid", what="a check once the faults stop")


def test_a_burst_beside_the_checks_meets_no_429_and_checks_keep_their_share(
    stack: tuple[Pipeline, Sandbox],
) -> None:
    pipeline, sandbox = stack
    connect(pipeline, "user-burst")  # the account has connections, so it is checked every second
    time.sleep(1.1)
    day = int(time.time() // 86400)
    names = RedisNames(pipeline.prefix).account("demo-account")
    client = redis_of(pipeline)
    checks_before = int(client.get(names.check_daily_calls(day)) or 0)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(lambda n: connect(pipeline, f"burst-{n}"), range(8)))
    elapsed = time.monotonic() - started
    assert len(set(ids)) == 8
    stats = httpx.get(f"{sandbox.url}/_sandbox/stats").json()
    assert stats["responses_429"]["rate_limit"] == 0
    assert stats["ever_blocked"] is False
    checks = int(client.get(names.check_daily_calls(day)) or 0) - checks_before
    assert checks <= RATE * SHARE * elapsed + 1, (checks, elapsed)
    metrics = httpx.get(f"{pipeline.shim_url}/metrics").text
    assert 'okc_connections{account="demo-account",status="valid"}' in metrics
