"""The webhook routes on fakeredis: registration (secret shown once), tenancy, the URL rules against
request forgery, deliveries and replay."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from tests.support.deliveries import PUBLIC_URL, webhooks_of
from tests.support.shim import CALLER, PREFIX, Shim, open_shim
from worker.follow.consume import StreamedEvent
from worker.webhooks.dispatcher import Dispatcher

pytestmark = pytest.mark.anyio


async def test_registering_shows_the_secret_once_in_the_standard_webhooks_form(shim: Shim) -> None:
    answer = await shim.http.post(
        "/v1/webhooks", json={"url": PUBLIC_URL, "events": ["connection.completed"]}, headers=CALLER
    )
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert set(created) == {"id", "url", "events", "secret", "created_at"}
    assert created["url"] == PUBLIC_URL
    assert created["events"] == ["connection.completed"]
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) >= 24
    listed = (await shim.http.get("/v1/webhooks", headers=CALLER)).json()
    shown = {key: created[key] for key in ("id", "url", "events", "created_at")}
    assert listed == {"webhooks": [{**shown, "status": "enabled", "disabled_at": None}]}
    assert created["secret"] not in json.dumps(listed)
    everything = (await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=CALLER)).json()
    assert everything["events"] == []
    assert everything["secret"] != created["secret"]


async def test_a_caller_without_a_key_gets_401(shim: Shim) -> None:
    assert (await shim.http.get("/v1/webhooks")).status_code == 401
    assert (await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL})).status_code == 401


async def test_deleting_an_endpoint_and_unknown_or_other_tenants_endpoints_are_404(shim: Shim) -> None:
    created = (await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=CALLER)).json()
    theirs = webhooks_of(shim).create_endpoint("acme", PUBLIC_URL, [])
    for endpoint_id in (theirs.id, "wh_000000000000000000000000", "../../etc", "x" * 300):
        for method, path in (
            ("DELETE", f"/v1/webhooks/{endpoint_id}"),
            ("GET", f"/v1/webhooks/{endpoint_id}/deliveries"),
            ("POST", f"/v1/webhooks/{endpoint_id}/replay"),
            ("PATCH", f"/v1/webhooks/{endpoint_id}"),
            ("POST", f"/v1/webhooks/{endpoint_id}/secret"),
            ("POST", f"/v1/webhooks/{endpoint_id}/enable"),
        ):
            answer = await shim.http.request(
                method, path, headers=CALLER, json={"since": "2026-01-01T00:00:00Z"}
            )
            assert answer.status_code == 404, (method, path, answer.text)
            assert "error" in answer.json()
    assert [
        item["id"] for item in (await shim.http.get("/v1/webhooks", headers=CALLER)).json()["webhooks"]
    ] == [created["id"]]
    assert (await shim.http.delete(f"/v1/webhooks/{created['id']}", headers=CALLER)).status_code == 204
    assert (await shim.http.get("/v1/webhooks", headers=CALLER)).json() == {"webhooks": []}
    assert webhooks_of(shim).endpoint(theirs.id) is not None  # the other tenant's is untouched


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://10.1.2.3/hook", "private"),
        ("https://192.168.0.10/hook", "private"),
        ("https://172.16.5.4/hook", "private"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://[fd00:ec2::254]/", "metadata"),
        ("https://169.254.10.10/hook", "link-local"),
        ("https://[fe80::1]/hook", "link-local"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://[::1]/hook", "loopback"),
        ("https://localhost/hook", "loopback"),  # a name that resolves to loopback
        ("http://localhost:8080/hook", "loopback"),
        ("https://[::ffff:10.0.0.1]/hook", "private"),
        ("https://[2002:7f00:1::]:6379/", "loopback"),  # 6to4 of 127.0.0.1
        ("https://[2002:a9fe:a9fe::]/", "metadata"),  # 6to4 of 169.254.169.254
        ("https://[2002:0a00:0001::1]/hook", "private"),  # 6to4 of 10.0.0.1
        ("https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook", "loopback"),  # Teredo, client 127.0.0.1
        ("https://[64:ff9b::a9fe:a9fe]/", "metadata"),  # NAT64 of 169.254.169.254
        ("https://0.0.0.0/hook", "unspecified"),
        ("https://224.0.0.5/hook", "multicast"),
        ("https://user:pass@93.184.215.14/hook", "user information"),
        ("https://93.184.215.14@10.0.0.1/hook", "user information"),
        ("https://93.184.215.14/hook#part", "fragment"),
        ("http://93.184.215.14/hook", "https"),
        ("ftp://93.184.215.14/hook", "https"),
        ("file:///etc/passwd", "https"),
        ("gopher://93.184.215.14:70/", "https"),
        ("javascript:alert(1)", "https"),
        ("https://no-such-host.invalid/hook", "does not resolve"),
        ("https:///hook", "no host"),
        ("https://93.184.215.14:99999/", "valid"),
    ],
)
async def test_urls_that_reach_inside_are_refused_with_422(shim: Shim, url: str, why: str) -> None:
    answer = await shim.http.post("/v1/webhooks", json={"url": url}, headers=CALLER)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "webhook_url_refused"
    assert why in error["message"], error
    assert (await shim.http.get("/v1/webhooks", headers=CALLER)).json() == {"webhooks": []}


async def test_listed_hosts_may_be_reached_over_loopback() -> None:

    async with open_shim(webhook_allowed_hosts="127.0.0.1,localhost") as shim:
        for url in ("http://127.0.0.1:8099/hook", "http://localhost:8099/hook", "https://127.0.0.1/hook"):
            answer = await shim.http.post("/v1/webhooks", json={"url": url}, headers=CALLER)
            assert answer.status_code == 201, (url, answer.text)
        refused = await shim.http.post("/v1/webhooks", json={"url": "https://10.0.0.1/"}, headers=CALLER)
        assert refused.status_code == 422


async def test_bad_bodies_are_422_never_500(shim: Shim) -> None:
    for body in ({}, {"url": 5}, {"url": PUBLIC_URL, "events": ["no.such.type"]}, {"url": "x" * 5000}):
        answer = await shim.http.post("/v1/webhooks", json=body, headers=CALLER)
        assert answer.status_code == 422, (body, answer.text)
    created = (await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=CALLER)).json()
    for body in ({}, {"since": "yesterday"}, {"since": "2026-01-01T00:00:00"}):  # no offset: ambiguous
        answer = await shim.http.post(f"/v1/webhooks/{created['id']}/replay", json=body, headers=CALLER)
        assert answer.status_code == 422, (body, answer.text)


async def test_events_become_deliveries_shown_most_recent_first_and_a_replay_queues_them_again(
    shim: Shim,
) -> None:
    created = (
        await shim.http.post(
            "/v1/webhooks",
            json={"url": PUBLIC_URL, "events": ["authorization.started", "callback.received"]},
            headers=CALLER,
        )
    ).json()
    since = time.time() - 1
    flows = [shim.new_flow() for _ in range(3)]
    dispatcher = Dispatcher(
        shim.store.redis, shim.store.names, webhooks_of(shim), shim.enqueuer.enqueue_delivery, "test"
    )
    stream = shim.store.redis.xrange(shim.store.names.all_events_stream)
    batch = [StreamedEvent(entry_id.decode(), fields[b"event"]) for entry_id, fields in stream]
    assert dispatcher.dispatch(batch) == [streamed.entry_id for streamed in batch]
    dispatcher.dispatch(batch)  # seen twice (a consumer that died before its XACK): one delivery each
    assert len(shim.enqueuer.deliveries) == 3
    deliveries = (await shim.http.get(f"/v1/webhooks/{created['id']}/deliveries", headers=CALLER)).json()
    assert [item["flow_id"] for item in deliveries["deliveries"]] == [
        flow.flow_id for flow in reversed(flows)
    ]
    first = deliveries["deliveries"][0]
    assert first["status"] == "pending"
    assert first["attempts"] == 0
    assert first["type"] == "authorization.started"
    assert first["last_status_code"] is None
    assert first["next_attempt_at"].endswith("Z")
    # pending deliveries are not queued twice by a replay; every event since then counts
    replay = await shim.http.post(
        f"/v1/webhooks/{created['id']}/replay",
        json={"since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))},
        headers=CALLER,
    )
    assert replay.status_code == 202
    assert replay.json() == {"queued": 3}
    assert len(shim.enqueuer.deliveries) == 3
    assert PREFIX in shim.store.names.all_events_stream
    metrics = (await shim.http.get("/metrics")).text
    assert "okc_webhook_pending_deliveries 3.0" in metrics
    assert "okc_webhook_oldest_pending_seconds" in metrics


async def test_each_tenant_sees_only_its_own_endpoints(tmp_path: Path) -> None:

    acme_key = "acme-caller-key-0123456789abcdef"
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        "[tenants.acme]\n"
        f'api_keys = ["{acme_key}"]\n'
        'oktopost = { account_id = "acme-account", api_key = "acme-oktopost-key-0123456789" }\n'
    )
    acme = {"Authorization": f"Bearer {acme_key}"}
    async with open_shim(tenants_file=str(tenants)) as shim:
        ours = (await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=CALLER)).json()
        theirs = (await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=acme)).json()
        assert webhooks_of(shim).endpoint(theirs["id"]).tenant == "acme"  # type: ignore[union-attr]
        listed = (await shim.http.get("/v1/webhooks", headers=acme)).json()["webhooks"]
        assert [item["id"] for item in listed] == [theirs["id"]]
        for endpoint_id, headers in ((ours["id"], acme), (theirs["id"], CALLER)):
            answer = await shim.http.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=headers)
            assert answer.status_code == 404
            assert (await shim.http.delete(f"/v1/webhooks/{endpoint_id}", headers=headers)).status_code == 404
        assert (await shim.http.delete(f"/v1/webhooks/{theirs['id']}", headers=acme)).status_code == 204


async def test_past_webhook_max_endpoints_a_registration_is_422_webhook_limit() -> None:
    from tests.support.shim import open_shim

    async with open_shim(webhook_max_endpoints=3) as shim:
        for _ in range(3):
            created = await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=CALLER)
            assert created.status_code == 201
        refused = await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=CALLER)
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "webhook_limit"
        listed = (await shim.http.get("/v1/webhooks", headers=CALLER)).json()["webhooks"]
        assert len(listed) == 3
        await shim.http.delete(f"/v1/webhooks/{listed[0]['id']}", headers=CALLER)
        again = await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=CALLER)
        assert again.status_code == 201  # room again once one is deleted


async def test_the_default_limit_is_twenty_endpoints(shim: Shim) -> None:
    statuses = [
        (await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=CALLER)).status_code
        for _ in range(21)
    ]
    assert statuses == [201] * 20 + [422]


async def test_a_tenant_replays_ten_times_a_minute_and_is_told_when_to_try_again(shim: Shim) -> None:
    created = (await shim.http.post("/v1/webhooks", json={"url": PUBLIC_URL}, headers=CALLER)).json()
    url, body = f"/v1/webhooks/{created['id']}/replay", {"since": "2026-01-01T00:00:00Z"}
    for _ in range(10):  # one after the other, as a replay going on from each window's next_since does
        replayed = await shim.http.post(url, json=body, headers=CALLER)
        assert (replayed.status_code, replayed.json()) == (202, {"queued": 0})
    again = await shim.http.post(url, json=body, headers=CALLER)
    assert again.status_code == 429
    assert again.json()["error"]["code"] == "replay_too_soon"
    assert 55 <= int(again.headers["retry-after"]) <= 60
    webhooks_of(shim).redis.delete(shim.store.names.webhook_replay_turn("default"))  # a minute later
    assert (await shim.http.post(url, json=body, headers=CALLER)).status_code == 202
