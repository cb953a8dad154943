"""The pieces of `up` and `demo` without starting the stack: the children's environment, the Redis choice,
stopping a process group, and how the demo prints an event."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from cli import embedded_redis
from cli.demo_flows import describe_event
from cli.embedded_redis import EmbeddedRedisError, RedisService, ensure_redis, redacted_url
from cli.processes import Child, free_port, spawn, stop_groups
from cli.stack import StackOptions, child_env

SHIM = "http://127.0.0.1:8000"
SANDBOX = "http://127.0.0.1:8090"


def test_without_caller_keys_a_dev_key_is_generated_and_passed_on() -> None:
    env, key, generated = child_env(
        StackOptions(), RedisService("redis://r:1/0", "external"), SHIM, SANDBOX, {}
    )
    assert generated
    assert key.startswith("dev-")
    assert len(key) > 30
    assert env["SHIM_API_KEYS"] == key
    other, _, _ = child_env(StackOptions(), RedisService("redis://r:1/0", "external"), SHIM, SANDBOX, {})
    assert other["SHIM_API_KEYS"] != key


def test_configured_caller_keys_are_kept_and_not_called_generated() -> None:
    base = {"SHIM_API_KEYS": "first, second"}
    env, key, generated = child_env(
        StackOptions(), RedisService("redis://r:1/0", "external"), SHIM, None, base
    )
    assert (key, generated, env["SHIM_API_KEYS"]) == ("first", False, "first, second")


def test_up_fills_in_urls_without_overriding_the_users() -> None:
    base = {"PUBLIC_BASE_URL": "https://connect.example", "OKTOPOST_BASE_URL": "https://eu-api.oktopost.com"}
    env, _, _ = child_env(StackOptions(), RedisService("redis://r:1/0", "external"), SHIM, SANDBOX, base)
    assert env["PUBLIC_BASE_URL"] == "https://connect.example"
    assert env["OKTOPOST_BASE_URL"] == SANDBOX  # with the sandbox running there is nothing else to call
    assert SHIM in env["ALLOWED_RETURN_URLS"].split(",")
    demo, _, _ = child_env(
        StackOptions(override_env=True), RedisService("redis://r:1/0", "external"), SHIM, SANDBOX, base
    )
    assert demo["PUBLIC_BASE_URL"] == SHIM


def test_with_credentials_the_oktopost_url_is_left_alone() -> None:
    base = {"OKTOPOST_API_KEY": "k", "OKTOPOST_BASE_URL": "https://eu-api.oktopost.com"}
    env, _, _ = child_env(StackOptions(), RedisService("redis://r:1/0", "external"), SHIM, None, base)
    assert env["OKTOPOST_BASE_URL"] == "https://eu-api.oktopost.com"


def test_an_embedded_redis_is_the_broker_too() -> None:
    base = {"REDIS_URL": "redis://down:6379/0", "CELERY_BROKER_URL": "redis://down:6379/0"}
    exited = Child("redis-server", ["true"])
    exited.popen.wait()
    embedded = RedisService.private("redis-server", 5555, exited)
    env, _, _ = child_env(StackOptions(), embedded, SHIM, SANDBOX, base)
    assert env["REDIS_URL"] == env["CELERY_BROKER_URL"] == "redis://127.0.0.1:5555/0"
    external = RedisService("redis://up:6379/0", "external")
    env, _, _ = child_env(
        StackOptions(), external, SHIM, SANDBOX, {"CELERY_BROKER_URL": "redis://broker:6379/1"}
    )
    assert env["CELERY_BROKER_URL"] == "redis://broker:6379/1"


def test_printed_redis_urls_hide_the_password() -> None:
    assert redacted_url("redis://:s3cret@host:6380/2") == "redis://:***@host:6380/2"
    assert redacted_url("redis://user:s3cret@host/0") == "redis://user:***@host/0"
    assert redacted_url("redis://host:6379/0") == "redis://host:6379/0"


def test_a_closed_redis_url_is_not_used() -> None:
    with pytest.raises(EmbeddedRedisError, match="does not answer PING"):
        ensure_redis(f"redis://127.0.0.1:{free_port()}/0", prefer="external")


def test_without_any_redis_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded_redis.shutil, "which", lambda _: None)
    monkeypatch.setattr(embedded_redis, "fakeredis_available", lambda: False)
    with pytest.raises(EmbeddedRedisError) as refused:
        ensure_redis(f"redis://127.0.0.1:{free_port()}/0")
    assert "pip install 'oktopost-connect[tools]'" in str(refused.value)
    assert "\n" not in str(refused.value)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.alone
def test_stopping_a_group_kills_what_ignores_sigterm_and_its_stragglers() -> None:
    # a leader that ignores SIGTERM, with a grandchild that ignores it too
    leader = spawn(
        ["sh", "-c", "trap '' TERM; sh -c \"trap '' TERM; sleep 60\" & echo $!; wait"], output=subprocess.PIPE
    )
    assert leader.stdout is not None
    grandchild = int(leader.stdout.readline())
    assert os.getpgid(grandchild) == leader.pid
    started = time.monotonic()
    stop_groups([leader], timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert leader.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 2
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(grandchild)


@pytest.mark.alone
def test_a_group_that_obeys_sigterm_stops_at_once() -> None:
    leader = spawn(["sleep", "60"], output=subprocess.DEVNULL)
    started = time.monotonic()
    stop_groups([leader], timeout=5)
    assert time.monotonic() - started < 1
    assert leader.returncode == -signal.SIGTERM


def _event(kind: str, data: dict[str, object]) -> dict[str, object]:
    return {"type": kind, "network": "Facebook", "entity_type": "page", "reference": "r-1", "data": data}


@pytest.mark.parametrize(
    ("kind", "data", "shown"),
    [
        (
            "authorization.started",
            {"expires_at": "T1"},
            "Facebook page, reference r-1; callback awaited until T1",
        ),
        ("callback.received", {"token_expires_at": "T2"}, "the token lives until T2"),
        (
            "selection.required",
            {"entities": [{"id": "1", "name": "A", "is_connected": True}, {"id": "2", "name": "B"}]},
            "2 offered: A (connected), B",
        ),
        ("selection.submitted", {"ids": ["1", "2"]}, "ids 1, 2"),
        (
            "connection.completed",
            {"credentials": [{"id": "c1", "name": "A", "status": "valid"}]},
            "A [c1] valid",
        ),
        (
            "authorization.failed",
            {"code": "token_invalid", "message": "m", "retryable": False},
            "token_invalid: m",
        ),
        ("authorization.expired", {"stage": "verify"}, "at stage verify"),
    ],
)
def test_each_event_is_one_readable_line(kind: str, data: dict[str, object], shown: str) -> None:
    line = describe_event(_event(kind, data))
    assert shown in line
    assert "\n" not in line
