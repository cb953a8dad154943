"""Two tenants on two Oktopost accounts, against real processes: a sandbox serving both accounts and a
pipeline whose TENANTS_FILE names both tenants. Each tenant's flows are connected on its own account,
another tenant's key gets 404 on every flow route, each tenant's channel carries only its own events, and
no Oktopost API key is anywhere in Redis."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support.flows import callback, consent, events_of, wait_for_event
from tests.support.stack import Pipeline, RedisServer, start_pipeline, start_sandbox
from worker.keys import RedisNames
from worker.upstream.parking import STRANDED_SECONDS

pytestmark = pytest.mark.integration

ACME_OKTOPOST = ("acme-account", "acme-oktopost-secret-3f9a1c")
GLOBEX_OKTOPOST = ("globex-account", "globex-oktopost-secret-7be24d")
ACME = {"Authorization": "Bearer acme-caller-key-0123456789abcdef"}
GLOBEX = {"Authorization": "Bearer globex-caller-key-0123456789abcd"}


def tenants_toml(sandbox_url: str) -> str:
    tables = []
    for name, caller, (account_id, api_key) in (
        ("acme", ACME, ACME_OKTOPOST),
        ("globex", GLOBEX, GLOBEX_OKTOPOST),
    ):
        tables.append(
            f"[tenants.{name}]\n"
            f'api_keys = ["{caller["Authorization"].removeprefix("Bearer ")}"]\n'
            f'allowed_return_urls = ["https://{name}.example"]\n'
            f'oktopost = {{ account_id = "{account_id}", api_key = "{api_key}", base_url = "{sandbox_url}",'
            f' rate_limit = "1000/second" }}\n'
        )
    return "\n".join(tables)


class TenantChannel:
    """Every message published on one tenant's channel, collected by a thread."""

    def __init__(self, pipeline: Pipeline, tenant: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._pubsub = pipeline.redis().pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(RedisNames(pipeline.prefix).tenant_channel(tenant))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is not None:
                self.events.append(json.loads(message["data"]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pubsub.close()


def start(pipeline: Pipeline, caller: dict[str, str], entity_type: str) -> dict[str, Any]:
    body = {"network": "Facebook", "type": entity_type, "ui": "redirect"}
    answer = httpx.post(f"{pipeline.shim_url}/v1/authorizations", json=body, headers=caller, timeout=15)
    assert answer.status_code == 201, answer.text
    return answer.json()


def every_value_in(client: redis.Redis) -> str:
    """Every key of the Redis and every value it holds, whatever its type, as one text."""
    server: Any = client  # redis-py annotates commands as sync-or-async; this is sync
    seen: list[bytes] = []
    for key in server.scan_iter(count=1000):
        seen.append(key)
        kind = server.type(key).decode()
        if kind == "string":
            seen.append(server.get(key) or b"")
        elif kind == "hash":
            seen.extend(item for pair in server.hgetall(key).items() for item in pair)
        elif kind == "list":
            seen.extend(server.lrange(key, 0, -1))
        elif kind == "set":
            seen.extend(server.smembers(key))
        elif kind == "zset":
            seen.extend(member for member, _ in server.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            seen.extend(v for _, fields in server.xrange(key) for pair in fields.items() for v in pair)
        else:
            raise AssertionError(f"a Redis key of an unexpected type: {kind}")
    return b"\n".join(seen).decode(errors="replace")


def test_two_tenants_on_two_accounts_stay_apart(redis_server: RedisServer, tmp_path: Path) -> None:
    sandbox = start_sandbox("--account", ":".join(ACME_OKTOPOST), "--account", ":".join(GLOBEX_OKTOPOST))
    pipeline: Pipeline | None = None
    channels: list[TenantChannel] = []
    try:
        tenants_file = tmp_path / "tenants.toml"
        tenants_file.write_text(tenants_toml(sandbox.url))
        pipeline = start_pipeline(redis_server.url, sandbox.url, workers=1, tenants_file=tenants_file)
        acme_channel, globex_channel = TenantChannel(pipeline, "acme"), TenantChannel(pipeline, "globex")
        channels = [acme_channel, globex_channel]
        acme_flows = [start(pipeline, ACME, "profile") for _ in range(2)]
        globex_flows = [start(pipeline, GLOBEX, "page"), start(pipeline, GLOBEX, "profile")]

        # another tenant's key: 404 on every flow route, for flows of either tenant
        for flow, stranger in ((acme_flows[0], GLOBEX), (globex_flows[0], ACME)):
            base = f"{pipeline.shim_url}/v1/authorizations/{flow['flow_id']}"
            for method, url, body in (
                ("GET", base, None),
                ("GET", f"{base}/events", None),
                ("POST", f"{base}/selection", {"ids": ["1"]}),
            ):
                answer = httpx.request(method, url, json=body, headers=stranger, timeout=5)
                assert answer.status_code == 404, (url, answer.text)

        for flow in acme_flows + globex_flows:
            assert callback(consent(flow["redirect_url"])).status_code in (200, 303)
        page = globex_flows[0]["flow_id"]
        offered = wait_for_event(pipeline, page, "selection.required")["data"]["entities"]
        selection = httpx.post(
            f"{pipeline.shim_url}/v1/authorizations/{page}/selection",
            json={"ids": [offered[1]["id"]]},
            headers=GLOBEX,
            timeout=5,
        )
        assert selection.status_code == 202, selection.text

        connected: dict[str, set[str]] = {}
        tenant_flows = {"acme": acme_flows, "globex": globex_flows}
        for tenant, flows in tenant_flows.items():
            for flow in flows:
                events = events_of(pipeline, flow["flow_id"])
                assert events[-1]["type"] == "connection.completed", events[-1]
                assert {event["tenant"] for event in events} == {tenant}
                ids = {credential["id"] for credential in events[-1]["data"]["credentials"]}
                connected.setdefault(tenant, set()).update(ids)
        # each tenant's flows were connected on its own Oktopost account
        accounts = {item["Id"]: item["Account"] for item in sandbox.connections()}
        assert {accounts[credential] for credential in connected["acme"]} == {ACME_OKTOPOST[0]}
        assert {accounts[credential] for credential in connected["globex"]} == {GLOBEX_OKTOPOST[0]}

        # each tenant's channel carried its own flows' events, all of them, and nothing else
        for channel, tenant in ((acme_channel, "acme"), (globex_channel, "globex")):
            channel.close()
            flow_ids = {flow["flow_id"] for flow in tenant_flows[tenant]}
            assert {event["flow_id"] for event in channel.events} == flow_ids
            assert {event["tenant"] for event in channel.events} == {tenant}
            completed = [event for event in channel.events if event["type"] == "connection.completed"]
            assert len(completed) == len(flow_ids)

        # the Oktopost API keys live in the file and in memory: not one key or value in Redis holds them
        stored = every_value_in(pipeline.redis())
        assert pipeline.prefix in stored  # the scan did see this pipeline's keys
        assert ACME_OKTOPOST[1] not in stored
        assert GLOBEX_OKTOPOST[1] not in stored
    finally:
        for channel in channels:
            channel.close()
        if pipeline is not None:
            pipeline.stop()
        sandbox.process.stop()


def test_a_deploy_that_adds_a_tenant_loses_none_of_its_flows_to_a_worker_started_before(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The shim knows the new tenant globex before any worker does: the old worker parks globex's flow
    under its account instead of failing it, and the worker started with the new file completes it."""
    sandbox = start_sandbox("--account", ":".join(ACME_OKTOPOST), "--account", ":".join(GLOBEX_OKTOPOST))
    pipeline: Pipeline | None = None
    try:
        old_file, new_file = tmp_path / "old.toml", tmp_path / "new.toml"
        new_file.write_text(tenants_toml(sandbox.url))
        old_file.write_text(tenants_toml(sandbox.url).split("\n\n[tenants.globex]")[0])
        pipeline = start_pipeline(redis_server.url, sandbox.url, workers=0, tenants_file=new_file)
        pipeline.env["TENANTS_FILE"] = str(old_file)
        pipeline.start_worker()  # the worker of the deploy before: acme only
        pipeline.env["TENANTS_FILE"] = str(new_file)
        acme, globex = start(pipeline, ACME, "profile"), start(pipeline, GLOBEX, "profile")
        for flow in (acme, globex):
            assert callback(consent(flow["redirect_url"])).status_code in (200, 303)
        assert events_of(pipeline, acme["flow_id"])[-1]["type"] == "connection.completed"
        time.sleep(3)  # the old worker took globex's task more than once meanwhile
        # as if the new workers came more than STRANDED_SECONDS after the shim: no worker has known
        # globex's account for that long, and its flow still waits while its token lives
        names, client = RedisNames(pipeline.prefix), pipeline.redis()
        parked_set = names.account(GLOBEX_OKTOPOST[0]).parked_flows
        assert client.zadd(
            names.parked_accounts, {parked_set: time.time() - STRANDED_SECONDS - 1}, xx=True, ch=True
        )
        client.close()
        time.sleep(2)  # the old worker's unparker looks at least once a second
        status = httpx.get(
            f"{pipeline.shim_url}/v1/authorizations/{globex['flow_id']}", headers=GLOBEX, timeout=5
        )
        assert status.json()["status"] == "verifying", status.text
        pipeline.start_worker()  # the deploy's new worker
        events = events_of(pipeline, globex["flow_id"])
        assert events[-1]["type"] == "connection.completed", events[-1]
        (credential,) = events[-1]["data"]["credentials"]
        accounts = {item["Id"]: item["Account"] for item in sandbox.connections()}
        assert accounts[credential["id"]] == GLOBEX_OKTOPOST[0]
    finally:
        if pipeline is not None:
            pipeline.stop()
        sandbox.process.stop()
