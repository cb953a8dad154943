"""The operators' commands and the webhook settings: one line and exit 2 for anything bad; `webhooks
list` shows endpoints without their secrets; `webhooks replay` queues the tenant's events again."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from tests.support.processes import run_cli
from tests.support.stack import RedisServer
from worker.flows.flow import Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.webhooks.endpoints import WebhookStore


@pytest.mark.parametrize(
    ("command", "env", "named"),
    [
        (["worker"], {"WEBHOOK_RETRY_SCHEDULE": "5s,soon"}, "WEBHOOK_RETRY_SCHEDULE"),
        (["webhooks", "list"], {"WEBHOOK_RETRY_SCHEDULE": "2 days"}, "WEBHOOK_RETRY_SCHEDULE"),
        (["webhooks", "list"], {"WEBHOOK_TIMEOUT_SECONDS": "0"}, "WEBHOOK_TIMEOUT_SECONDS"),
        (["worker"], {"WEBHOOK_TIMEOUT_SECONDS": "forever"}, "WEBHOOK_TIMEOUT_SECONDS"),
    ],
)
def test_a_bad_webhook_setting_stops_with_one_line_and_exit_2(
    command: list[str], env: dict[str, str], named: str
) -> None:
    result = run_cli(*command, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["webhooks"],
        ["webhooks", "replay", "wh_000000000000000000000000"],
        ["webhooks", "replay", "wh_000000000000000000000000", "--since", "last tuesday"],
        ["webhooks", "replay", "wh_000000000000000000000000", "--since", "2026-11-28T14:00:00"],
        ["worker", "--serve", "everything"],
    ],
)
def test_bad_arguments_exit_2_without_a_traceback(args: list[str]) -> None:
    result = run_cli(*args, env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_operators_list_endpoints_without_secrets_and_replay_a_tenants_events(
    redis_server: RedisServer,
) -> None:
    prefix = f"ops{time.time_ns()}"
    client: Any = redis.Redis.from_url(redis_server.url)
    names = RedisNames(prefix)
    webhooks = WebhookStore(client, names, 3600, (1.0,))
    ours = webhooks.create_endpoint("default", "https://hooks.partner.example/a", ["authorization.started"])
    theirs = webhooks.create_endpoint("acme", "https://hooks.acme.example/b", [])
    flows = FlowStore(client, names, Lifetimes())
    for index in range(3):
        flows.create(f"{index:040x}", "LinkedIn", "profile", None, None)
    env = {"REDIS_URL": redis_server.url, "CHANNEL_PREFIX": prefix}
    # what a worker's dispatcher does as it reads the stream: the events into their tenants' indexes
    entries = client.xrange(names.all_events_stream)
    webhooks.index_events([(entry_id.decode(), "default", fields[b"event"]) for entry_id, fields in entries])

    listed = run_cli("webhooks", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {(line["id"], line["tenant"]) for line in lines} == {(ours.id, "default"), (theirs.id, "acme")}
    assert "whsec_" not in listed.stdout

    replayed = run_cli("webhooks", "replay", ours.id, "--since", "2020-01-01T00:00:00Z", env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout) == {"id": ours.id, "queued": 3}
    queued = client.lrange(f"{prefix}.oktopost-connect.webhooks", 0, -1)
    assert len(queued) == 3
    assert all(ours.id.encode() in message and b"whsec_" not in message for message in queued)
    # the other tenant's endpoint gets nothing of ours: a replay reads the tenant's events only
    assert run_cli(
        "webhooks", "replay", theirs.id, "--since", "2020-01-01T00:00:00+00:00", env=env
    ).stdout == (json.dumps({"id": theirs.id, "queued": 0}) + "\n")
    missing = run_cli(
        "webhooks", "replay", "wh_000000000000000000000000", "--since", "2020-01-01T00:00Z", env=env
    )
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1
    client.close()
