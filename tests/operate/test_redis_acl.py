"""Redis as docker-compose.yml runs it, with its ACL: a real redis-server started from the compose file's
own command line (the rules are read from there, not copied), the shim and a worker logged in as the
`pipeline` user, and a subscribing service as the `subscriber` user. The pipeline runs flows; the
subscriber follows them and reads the streams, and can neither read a token, nor forge an event, nor
read any other key, nor run an admin command."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis

from tests.support.compose_spec import DEPLOYER_SECRETS, argv_of, deployer_env, services
from tests.support.flows import callback, consent, select, start_flow
from tests.support.processes import run_cli
from tests.support.stack import RedisServer, Sandbox, start_pipeline, start_redis, stop_redis
from worker.follow.subscribe import follow_flow
from worker.keys import RedisNames

pytestmark = pytest.mark.integration

PREFIX = f"acl{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[RedisServer]:
    argv = argv_of(services()["redis"]["command"], {**deployer_env(), "CHANNEL_PREFIX": PREFIX})
    assert argv[0] == "redis-server"
    server = start_redis(argv[1:])
    yield server
    stop_redis(server)


def user(server: RedisServer, name: str) -> redis.Redis:
    password = DEPLOYER_SECRETS[f"REDIS_{name.upper()}_PASSWORD"]
    return redis.Redis(port=server.port, username=name, password=password, socket_timeout=10)


@pytest.fixture(scope="module")
def waiting_flow(acl_redis: RedisServer, sandbox: Sandbox) -> Iterator[dict[str, Any]]:
    """A page flow run by the pipeline as the pipeline user, held at its selection (its token is stored),
    then completed when the module's tests are done."""
    password = DEPLOYER_SECRETS["REDIS_PIPELINE_PASSWORD"]
    url = f"redis://pipeline:{password}@127.0.0.1:{acl_redis.port}/0"
    pipeline = start_pipeline(url, sandbox.url, channel_prefix=PREFIX)
    try:
        created = start_flow(pipeline, network="Facebook", entity_type="page")
        assert callback(consent(created["redirect_url"])).status_code == 303
        offer = next(
            event
            for event in follow_flow(user(acl_redis, "subscriber"), created["flow_id"], PREFIX, timeout=30)
            if event["type"] == "selection.required"
        )
        flow = {**created, "entities": offer["data"]["entities"], "pipeline": pipeline}
        yield flow
    finally:
        pipeline.stop()


def test_nobody_gets_in_without_a_user_and_its_password(acl_redis: RedisServer) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_redis.port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_redis.port, username="subscriber", password="guessed").ping()


def test_the_pipeline_user_stores_the_flow_and_its_token(
    acl_redis: RedisServer, waiting_flow: dict[str, Any]
) -> None:
    names = RedisNames(PREFIX)
    pipeline = user(acl_redis, "pipeline")
    assert pipeline.exists(names.flow_token(waiting_flow["flow_id"])) == 1
    assert pipeline.hgetall(names.flow_state(waiting_flow["flow_id"]))


def test_a_subscriber_cannot_read_a_token_or_any_internal_key(
    acl_redis: RedisServer, waiting_flow: dict[str, Any]
) -> None:
    names = RedisNames(PREFIX)
    flow_id = waiting_flow["flow_id"]
    subscriber = user(acl_redis, "subscriber")
    refused: list[tuple[str, ...]] = [
        ("GET", names.flow_token(flow_id)),
        ("DUMP", names.flow_token(flow_id)),
        ("HGETALL", names.flow_state(flow_id)),
        ("EXISTS", names.flow_token(flow_id)),
        ("ZRANGE", names.deadlines, "0", "-1"),
        ("SCAN", "0"),
        ("KEYS", "*"),
        ("EVAL", "return redis.call('GET', KEYS[1])", "1", names.flow_token(flow_id)),
    ]
    for command in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            subscriber.execute_command(*command)


def test_a_subscriber_cannot_forge_an_event(acl_redis: RedisServer, waiting_flow: dict[str, Any]) -> None:
    names = RedisNames(PREFIX)
    flow_id = waiting_flow["flow_id"]
    forged = '{"type": "connection.completed"}'
    subscriber = user(acl_redis, "subscriber")
    for command in (
        ("PUBLISH", names.flow_channel(flow_id), forged),
        ("PUBLISH", names.all_events_channel, forged),
        ("XADD", names.flow_stream(flow_id), "*", "event", forged),
        ("DEL", names.flow_stream(flow_id)),
        ("XTRIM", names.flow_stream(flow_id), "MAXLEN", "0"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            subscriber.execute_command(*command)


def test_a_subscriber_cannot_run_admin_commands_or_listen_elsewhere(acl_redis: RedisServer) -> None:
    subscriber = user(acl_redis, "subscriber")
    for command in (
        ("CONFIG", "GET", "*"),
        ("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"),
        ("ACL", "LIST"),
        ("FLUSHALL",),
        ("CLIENT", "LIST"),
        ("INFO",),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            subscriber.execute_command(*command)
    for pattern in ("*", f"{PREFIX}:*"):  # every channel, the Celery ones included
        pubsub = subscriber.pubsub()
        try:
            pubsub.psubscribe(pattern)
            with pytest.raises(redis.exceptions.NoPermissionError):
                pubsub.get_message(timeout=2)
        finally:
            pubsub.close()


def test_a_subscriber_may_subscribe_to_every_public_channel(acl_redis: RedisServer) -> None:
    """The channels docs/api.md calls public: the all-flows one, a flow's, a tenant's, a connection's."""
    names = RedisNames(PREFIX)
    pipeline = user(acl_redis, "pipeline")
    channels = [
        names.all_events_channel,
        names.flow_channel("f" * 40),
        names.tenant_channel("acme"),
        names.connection_channel("003-credential"),
    ]
    pubsub = user(acl_redis, "subscriber").pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(*channels)
        for channel in channels:
            pipeline.publish(channel, f"to {channel}")
        got: list[str] = []
        deadline = time.monotonic() + 5
        while len(got) < len(channels) and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                got.append(message["data"].decode())
        assert got == [f"to {channel}" for channel in channels]
    finally:
        pubsub.close()


def test_a_subscriber_reads_the_streams_with_a_consumer_group(
    acl_redis: RedisServer, waiting_flow: dict[str, Any]
) -> None:
    names = RedisNames(PREFIX)
    subscriber = user(acl_redis, "subscriber")
    stream = names.flow_stream(waiting_flow["flow_id"])
    assert [fields[b"event"] for _, fields in cast(list[Any], subscriber.xrange(stream))]
    subscriber.xgroup_create(stream, "billing", id="0")
    answer = cast(list[Any], subscriber.xreadgroup("billing", "billing-1", {stream: ">"}, count=100))
    entries = answer[0][1]
    assert b"authorization.started" in entries[0][1][b"event"]
    assert subscriber.xack(stream, "billing", *[entry_id for entry_id, _ in entries]) == len(entries)
    # the stream of every event, for services that must not miss one while they are down
    every_event = f"{PREFIX}:events:stream"
    subscriber.xgroup_create(every_event, "billing", id="0", mkstream=True)
    subscriber.xreadgroup("billing", "billing-1", {every_event: ">"}, count=100)


def test_a_subscriber_follows_a_flow_to_its_end(acl_redis: RedisServer, waiting_flow: dict[str, Any]) -> None:
    """The pipeline user's last steps (the selection queued through Celery, the worker's completion)."""
    ids = [str(waiting_flow["entities"][0]["id"])]
    assert select(waiting_flow["pipeline"], waiting_flow["flow_id"], ids).status_code == 202
    events = list(follow_flow(user(acl_redis, "subscriber"), waiting_flow["flow_id"], PREFIX, timeout=30))
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "connection.completed", events[-1]


def test_watch_needs_no_more_than_a_subscriber_may_do(
    acl_redis: RedisServer, waiting_flow: dict[str, Any]
) -> None:
    """`oktopost-connect watch` as the `subscriber` user: the flow's events, then one line for an unknown
    flow and for a wrong password (it read the flow's state key once, which the ACL refuses: a traceback)."""
    flow_id = waiting_flow["flow_id"]
    if (
        user(acl_redis, "pipeline").hget(RedisNames(PREFIX).flow_state(flow_id), "state")
        == b"awaiting_selection"
    ):
        ids = [str(waiting_flow["entities"][0]["id"])]
        assert select(waiting_flow["pipeline"], flow_id, ids).status_code == 202
    history = list(follow_flow(user(acl_redis, "subscriber"), flow_id, PREFIX, timeout=30))
    password = DEPLOYER_SECRETS["REDIS_SUBSCRIBER_PASSWORD"]
    env = {
        "REDIS_URL": f"redis://subscriber:{password}@127.0.0.1:{acl_redis.port}/0",
        "CHANNEL_PREFIX": PREFIX,
    }
    watched = run_cli("watch", flow_id, "--timeout", "20", env=env)
    assert watched.returncode == 0, watched.stderr
    assert [json.loads(line) for line in watched.stdout.splitlines()] == history
    unknown = run_cli("watch", "0" * 40, "--timeout", "5", env=env)
    assert (unknown.returncode, unknown.stderr.count("\n")) == (2, 1), unknown.stderr
    assert "no flow" in unknown.stderr
    wrong = {**env, "REDIS_URL": f"redis://subscriber:guessed@127.0.0.1:{acl_redis.port}/0"}
    refused = run_cli("watch", flow_id, "--timeout", "5", env=wrong)
    assert (refused.returncode, refused.stderr.count("\n")) == (2, 1), refused.stderr
    assert "refused its user name or password" in refused.stderr
    assert "guessed" not in refused.stderr


@pytest.mark.usefixtures("waiting_flow")  # its pipeline's worker runs a dispatcher
def test_the_webhook_dispatchers_place_in_the_stream_is_out_of_a_subscribers_reach(
    acl_redis: RedisServer,
) -> None:
    """A subscriber may acknowledge entries of any consumer group on the all-flows stream: the
    dispatcher keeps none there, only a cursor and a turn in internal keys the subscriber cannot touch."""
    names = RedisNames(PREFIX)
    pipeline = user(acl_redis, "pipeline")
    groups = cast(list[dict[str, Any]], pipeline.xinfo_groups(names.all_events_stream))
    assert [group["name"] for group in groups if group["name"] != b"billing"] == []
    assert pipeline.get(names.webhook_dispatcher_turn) is not None  # the worker's dispatcher runs
    subscriber = user(acl_redis, "subscriber")
    for command in (
        ("GET", names.webhook_dispatch_cursor),
        ("SET", names.webhook_dispatch_cursor, "9999999999999-0"),
        ("DEL", names.webhook_dispatcher_turn),
        ("SET", names.webhook_dispatcher_turn, "subscriber"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            subscriber.execute_command(*command)
