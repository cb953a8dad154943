"""The routes that keep endpoints running, on the in-process shim: family filters, PATCH, secret rotation,
enabling with a replay, and deliveries a page at a time."""

from __future__ import annotations

import time

import pytest

from tests.support.deliveries import webhooks_of
from tests.support.shim import CALLER, Shim, open_shim
from worker.follow.consume import StreamedEvent
from worker.webhooks.dispatcher import Dispatcher

pytestmark = pytest.mark.anyio

PUBLIC_URL = "https://93.184.215.14/hooks/oktopost"


async def _create(shim: Shim, **body: object) -> dict[str, object]:
    answer = await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL, **body}, headers=CALLER)
    assert answer.status_code == 201, answer.text
    created: dict[str, object] = answer.json()
    return created


def _dispatch_everything(shim: Shim) -> None:
    dispatcher = Dispatcher(
        shim.store.redis, shim.store.names, webhooks_of(shim), shim.enqueuer.enqueue_delivery, "test"
    )
    stream = shim.store.redis.xrange(shim.store.names.all_events_stream)
    dispatcher.dispatch([StreamedEvent(entry_id.decode(), fields[b"event"]) for entry_id, fields in stream])


async def test_a_family_filter_is_accepted_and_unknown_ones_are_422(shim: Shim) -> None:
    created = await _create(shim, events=["authorization.*", "connection.completed"])
    assert created["events"] == ["authorization.*", "connection.completed"]
    for bad in (["nothing.*"], ["connection.nope"], ["*"], ["connection.**"], ["authorization.started.*"]):
        answer = await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL, "events": bad}, headers=CALLER)
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.json()["error"]["code"]


async def test_a_family_filter_gets_exactly_its_familys_events(shim: Shim) -> None:
    created = await _create(shim, events=["callback.*"])
    flow = shim.new_flow()
    _dispatch_everything(shim)  # only authorization.started so far: nothing for callback.*
    listed = await shim.http.get(f"/v1/webhooks/{created['id']}/deliveries", headers=CALLER)
    assert listed.json()["deliveries"] == []
    assert flow.flow_id


async def test_patch_changes_what_is_given_and_answers_the_endpoint_as_listed(shim: Shim) -> None:
    created = await _create(shim, events=["connection.completed"])
    path = f"/v1/webhooks/{created['id']}"
    changed = await shim.http.patch(
        path, json={"events": ["connection.*"], "rate_limit": "20/second"}, headers=CALLER
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["events"] == ["connection.*"]
    assert body["rate_limit"] == "20/second"
    assert body["url"] == PUBLIC_URL
    assert body["status"] == "enabled"
    assert "secret" not in body
    (listed,) = (await shim.http.get("/v1/webhooks", headers=CALLER)).json()["webhooks"]
    assert listed == body
    moved = await shim.http.patch(path, json={"url": PUBLIC_URL + "/v2", "rate_limit": None}, headers=CALLER)
    assert moved.json()["url"] == PUBLIC_URL + "/v2"
    assert moved.json()["events"] == ["connection.*"]  # not given: unchanged
    assert "rate_limit" not in moved.json()
    for bad in ({"url": "http://10.0.0.1/x"}, {"rate_limit": "fast"}, {"events": ["bogus"]}):
        answer = await shim.http.patch(path, json=bad, headers=CALLER)
        assert answer.status_code == 422, (bad, answer.text)


async def test_rotating_the_secret_shows_the_new_one_once(shim: Shim) -> None:
    created = await _create(shim)
    rotated = await shim.http.post(f"/v1/webhooks/{created['id']}/secret", headers=CALLER)
    assert rotated.status_code == 200, rotated.text
    secret = rotated.json()["secret"]
    assert secret.startswith("whsec_")
    assert secret != created["secret"]
    assert set(rotated.json()) == {"secret"}
    endpoint = webhooks_of(shim).endpoint(str(created["id"]))
    assert endpoint is not None
    assert endpoint.signing_secrets(time.time()) == [secret, created["secret"]]
    listed = (await shim.http.get("/v1/webhooks", headers=CALLER)).text
    assert secret not in listed
    assert str(created["secret"]) not in listed


async def test_a_disabled_endpoint_is_listed_as_such_and_enable_replays_what_it_missed(shim: Shim) -> None:
    created = await _create(shim, events=["authorization.started"])
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    endpoint = webhooks_of(shim).endpoint(str(created["id"]))
    assert endpoint is not None
    webhooks_of(shim).disable(endpoint, time.time() - 10)
    (listed,) = (await shim.http.get("/v1/webhooks", headers=CALLER)).json()["webhooks"]
    assert listed["status"] == "disabled"
    assert listed["disabled_at"].endswith("Z")
    metrics = (await shim.http.get("/metrics")).text  # what the WebhookEndpointDisabled alert reads
    assert 'okc_webhook_endpoints{status="disabled",tenant="default"} 1.0' in metrics
    assert 'okc_webhook_endpoints{status="enabled",tenant="default"} 0.0' in metrics
    flows = [shim.new_flow() for _ in range(2)]
    _dispatch_everything(shim)
    assert shim.enqueuer.deliveries == []  # nothing for a disabled endpoint
    enabled = await shim.http.post(
        f"/v1/webhooks/{created['id']}/enable", json={"replay_since": since}, headers=CALLER
    )
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["status"] == "enabled"
    assert enabled.json()["disabled_at"] is None
    assert enabled.json()["queued"] == len(flows)
    assert len(shim.enqueuer.deliveries) == len(flows)
    metrics = (await shim.http.get("/metrics")).text
    assert 'okc_webhook_endpoints{status="disabled",tenant="default"} 0.0' in metrics
    assert 'okc_webhook_endpoints{status="enabled",tenant="default"} 1.0' in metrics
    plain = await shim.http.post(f"/v1/webhooks/{created['id']}/enable", headers=CALLER)
    assert plain.status_code == 200
    assert plain.json()["queued"] == 0


async def test_deliveries_page_with_limit_and_cursor(shim: Shim) -> None:
    created = await _create(shim, events=["authorization.started"])
    flows = [shim.new_flow() for _ in range(5)]
    _dispatch_everything(shim)
    path = f"/v1/webhooks/{created['id']}/deliveries"
    first = (await shim.http.get(path, params={"limit": 2}, headers=CALLER)).json()
    second = (
        await shim.http.get(path, params={"limit": 2, "cursor": first["next_cursor"]}, headers=CALLER)
    ).json()
    third = (
        await shim.http.get(path, params={"limit": 2, "cursor": second["next_cursor"]}, headers=CALLER)
    ).json()
    assert third["next_cursor"] is None
    seen = [item["flow_id"] for page in (first, second, third) for item in page["deliveries"]]
    assert seen == [flow.flow_id for flow in reversed(flows)]
    other = await _create(shim, events=["authorization.started"])
    foreign = first["next_cursor"]  # this endpoint's, not the other's
    for params in ({"limit": 0}, {"limit": 101}, {"cursor": "%%%"}):
        answer = await shim.http.get(path, params=params, headers=CALLER)
        assert answer.status_code == 422, (params, answer.text)
        assert answer.json()["error"]["code"]
    elsewhere = await shim.http.get(
        f"/v1/webhooks/{other['id']}/deliveries", params={"cursor": foreign}, headers=CALLER
    )
    assert elsewhere.status_code == 422, elsewhere.text


async def test_a_replay_queues_a_window_of_events_and_its_answer_says_where_the_next_goes_on() -> None:
    async with open_shim(webhook_replay_max_events=2) as shim:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
        for _ in range(3):  # before the endpoint: only a replay sends them
            shim.new_flow()
            time.sleep(0.002)
        _dispatch_everything(shim)  # into the tenant's event index
        created = await _create(shim, events=["authorization.started"])
        url = f"/v1/webhooks/{created['id']}/replay"
        first = await shim.http.post(url, json={"since": since}, headers=CALLER)
        assert first.status_code == 202, first.text
        assert first.json()["queued"] == 2
        next_since = first.json()["next_since"]
        assert next_since.endswith("Z")
        rest = await shim.http.post(url, json={"since": next_since}, headers=CALLER)
        assert rest.json() == {"queued": 1}
        assert len(shim.enqueuer.deliveries) == 3  # each event once
        enabled = await shim.http.post(
            f"/v1/webhooks/{created['id']}/enable", json={"replay_since": since}, headers=CALLER
        )
        assert enabled.json()["queued"] == 2
        assert enabled.json()["next_since"] == next_since


async def test_enable_takes_replay_since_only_as_a_written_time_and_counts_it_among_the_replays(
    shim: Shim,
) -> None:
    created = await _create(shim)
    endpoint = webhooks_of(shim).endpoint(str(created["id"]))
    assert endpoint is not None
    url = f"/v1/webhooks/{created['id']}/enable"
    webhooks_of(shim).disable(endpoint, time.time() - 10)
    for since in (5, 1764000000.5, "0", "yesterday"):  # a number is not read as seconds since 1970
        answer = await shim.http.post(url, json={"replay_since": since}, headers=CALLER)
        assert answer.status_code == 422, (since, answer.text)
        assert answer.json()["error"]["code"] == "invalid_request"
    (listed,) = (await shim.http.get("/v1/webhooks", headers=CALLER)).json()["webhooks"]
    assert listed["status"] == "disabled"  # a refused request enabled nothing
    replay = f"/v1/webhooks/{created['id']}/replay"
    for _ in range(10):
        replayed = await shim.http.post(replay, json={"since": "2026-01-01T00:00:00Z"}, headers=CALLER)
        assert replayed.status_code == 202
    refused = await shim.http.post(url, json={"replay_since": "2026-01-01T00:00:00Z"}, headers=CALLER)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "replay_too_soon"
    assert 55 <= int(refused.headers["retry-after"]) <= 60
    (listed,) = (await shim.http.get("/v1/webhooks", headers=CALLER)).json()["webhooks"]
    assert listed["status"] == "disabled"  # refused whole: not enabled without its replay
    plain = await shim.http.post(url, headers=CALLER)  # no replay asked: no turn needed
    assert plain.status_code == 200
    assert plain.json()["status"] == "enabled"


async def test_a_delivery_of_an_event_of_no_flow_lists_its_flow_id_as_null(shim: Shim) -> None:
    created = await _create(shim)
    endpoint = webhooks_of(shim).endpoint(str(created["id"]))
    assert endpoint is not None
    event = {
        "id": "evt_connection",
        "type": "connection.invalid",
        "tenant": "default",
        "connection_id": "c-1",
    }
    assert webhooks_of(shim).create_delivery(endpoint, event, b"{}") is not None
    listed = await shim.http.get(f"/v1/webhooks/{created['id']}/deliveries", headers=CALLER)
    (delivery,) = listed.json()["deliveries"]
    assert (delivery["event_id"], delivery["flow_id"]) == ("evt_connection", None)
