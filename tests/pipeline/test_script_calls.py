"""worker.scripts.Step: a script's short path on a real redis-server answers exactly as redis-py's
`Script`, loads a flushed script again, reuses its connections, never reads a late answer as another
call's, leaves a forked child's calls to connections of the child's own, and closes its connections
with its client. (With REDIS_SENTINELS it
reaches the primary the sentinels name: tests/faults/test_sentinel_failover.py, where a take sent
anywhere else finds no flow.)"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis

from tests.support.receivers import wait_until
from tests.support.stack import RedisServer
from worker.scripts import Step, _Connections

pytestmark = pytest.mark.integration

ANSWERS = (
    "return {KEYS[1], tonumber(ARGV[1]) + 1, false, {ARGV[2], 'x'}, redis.call('INCR', KEYS[1] .. ':n')}"
)
BUSY_LOOP = "local t = redis.call('TIME'); local until_ = t[1] * 1000000 + t[2] + ARGV[1] * 1000 " + (
    "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= until_ return ARGV[2]"
)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    real = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    real.flushdb()
    yield real
    real.close()


def step(client: redis.Redis, source: str) -> Step:
    return Step(client.register_script(source), _Connections.of(client))


def test_a_step_answers_as_redis_pys_script(client: redis.Redis) -> None:
    short, plain = step(client, ANSWERS), client.register_script(ANSWERS)

    assert short(keys=["k"], args=[41, "é"]) == [b"k", 42, None, ["é".encode(), b"x"], 1]
    assert plain(keys=["k"], args=[41, "é"]) == [b"k", 42, None, ["é".encode(), b"x"], 2]
    with pytest.raises(redis.ResponseError) as short_error:
        short(keys=["k"], args=["not a number", "x"])
    with pytest.raises(redis.ResponseError) as plain_error:
        plain(keys=["k"], args=["not a number", "x"])
    assert str(short_error.value) == str(plain_error.value)
    assert short(keys=["k"], args=[1, "y"])[1] == 2  # the error left the connection usable


def test_a_flushed_script_is_loaded_again(client: redis.Redis) -> None:
    short = step(client, ANSWERS)
    assert short(keys=["k"], args=[1, "a"])[4] == 1
    client.script_flush()

    assert short(keys=["k"], args=[1, "a"])[4] == 2
    assert client.script_exists(short.script.sha) == [True]


def test_calls_one_after_another_share_one_connection_and_calls_at_once_get_one_each(
    client: redis.Redis,
) -> None:
    connections = _Connections.of(client)
    assert connections is not None
    short, slow = step(client, ANSWERS), step(client, BUSY_LOOP)
    for number in range(5):
        short(keys=["k"], args=[number, "a"])
    assert len(connections._free) == 1

    threads = [threading.Thread(target=slow, kwargs={"args": [100, "x"]}) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(connections._free) == 3  # Redis ran them one after the other, each on its own connection
    assert _Connections.of(client) is connections  # the client's scripts share the set


def test_a_call_that_timed_out_never_hands_its_late_answer_to_the_next(redis_server: RedisServer) -> None:
    impatient = redis.Redis.from_url(redis_server.url, socket_timeout=0.2, retry_on_timeout=False)
    slow, short = step(impatient, BUSY_LOOP), step(impatient, "return ARGV[1]")
    with impatient:
        with pytest.raises(redis.TimeoutError):
            slow(args=[600, "late"])
        time.sleep(0.7)  # the late answer has arrived on the connection that timed out

        assert short(args=["own"]) == b"own"
        assert short(args=["next"]) == b"next"


def test_a_forked_child_calls_on_connections_of_its_own(client: redis.Redis) -> None:
    short = step(client, ANSWERS)
    short(keys=["k"], args=[1, "a"])  # the parent holds a connection now
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's exit code is the assertion
        connections = _Connections.of(client)
        ok = connections is not None and not connections._free and short(keys=["c"], args=[1, "c"])[0] == b"c"
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert short(keys=["k"], args=[1, "a"])[4] == 2  # the parent's connection was not used by the child


def test_pipelines_and_stand_ins_take_redis_pys_script(client: redis.Redis) -> None:
    assert _Connections.of(fakeredis.FakeRedis()) is None
    assert _Connections.of(client.pipeline()) is None
    short = step(client, ANSWERS)
    with client.pipeline(transaction=False) as pipe:
        short(keys=["k"], args=[1, "a"], client=pipe)
        pipe.incr("k:n")
        answer, counted = pipe.execute()

    assert answer[4] == 1
    assert counted == 2


def test_a_closed_client_closes_its_scripts_connections(redis_server: RedisServer) -> None:
    named = redis.Redis.from_url(redis_server.url, client_name="okc-scripts-close")
    watcher: Any = redis.Redis.from_url(redis_server.url)  # Any: redis-py types it sync-or-async
    try:
        calls = step(named, ANSWERS)
        assert calls(keys=["closing"], args=[1, "a"])[1] == 2
        assert sum(c.get("name") == "okc-scripts-close" for c in watcher.client_list()) >= 1
        named.close()
        # Redis drops a closed connection when it reads its end: on a loaded machine a moment later
        wait_until(
            lambda: not [c for c in watcher.client_list() if c.get("name") == "okc-scripts-close"],
            2,
            "a script connection stayed open after close()",
        )
        assert calls(keys=["closing"], args=[1, "a"])[1] == 2  # a later call opens its connection again
    finally:
        named.close()
        watcher.close()
