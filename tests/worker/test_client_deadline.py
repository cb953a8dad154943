"""An attempt's timeout bounds the whole call, not each read: a real socket server in a thread answers
slowly, a byte at a time, or never, and both clients give up on time with a transport error."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.mock_oktopost import ACCOUNT, KEY, PROFILE, TOKEN
from worker.oktopost import AsyncOktopostClient, OktopostClient, VerifiedProfile
from worker.oktopost.errors import UpstreamTransportError

TIMEOUT = 0.5  # long enough for a round trip on a busy machine, short for the fast suite
MARGIN = 0.3
# elapsed times held to TIMEOUT + MARGIN
pytestmark = pytest.mark.alone
DRIBBLE_SECONDS = 0.2  # well under the timeout: every single read succeeds
ANSWER = json.dumps({"Result": True, "Credential": PROFILE}).encode()
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER)


class SlowOktopost:
    """Answers the requests on 127.0.0.1 in the ways given, the last one repeated: "at once", "head
    dribbled" (status line and headers one byte at a time), "body dribbled" (head at once, body one byte
    at a time) or "never"."""

    def __init__(self, *answers: str) -> None:
        self.answers = answers
        self.accepted = 0
        self.requests = 0
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def stop(self) -> None:
        self._stopping.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        connection.settimeout(0.05)
        with connection:
            try:
                while self._read_request(connection):
                    self._respond(connection)
            except OSError:  # the client gave up and closed its end
                return

    def _read_request(self, connection: socket.socket) -> bool:
        """True once a request's head arrived (the client's requests have no body); False when closed."""
        received = b""
        while b"\r\n\r\n" not in received:
            if self._stopping.is_set():
                return False
            try:
                chunk = connection.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                return False
            received += chunk
        return True

    def _respond(self, connection: socket.socket) -> None:
        answer = self.answers[min(self.requests, len(self.answers) - 1)]
        self.requests += 1
        if answer == "never":
            self._stopping.wait()
        elif answer == "at once":
            connection.sendall(HEAD + ANSWER)
        elif answer == "head dribbled":
            self._dribble(connection, HEAD)
            connection.sendall(ANSWER)
        elif answer == "body dribbled":
            connection.sendall(HEAD)
            self._dribble(connection, ANSWER)

    def _dribble(self, connection: socket.socket, data: bytes) -> None:
        for index in range(len(data)):
            if self._stopping.wait(DRIBBLE_SECONDS):
                return
            connection.sendall(data[index : index + 1])


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[SlowOktopost]:
    answers = request.param if isinstance(request.param, tuple) else (request.param,)
    slow = SlowOktopost(*answers)
    try:
        yield slow
    finally:
        slow.stop()


@pytest.fixture(params=["sync", "async"])
def verify(request: pytest.FixtureRequest) -> Callable[[str, int], list[Any]]:
    """`verify(url, times)`: that many verify calls, each with TIMEOUT, through one client; what each
    returned or raised."""

    def run(url: str, times: int) -> list[Any]:
        if request.param == "sync":
            with OktopostClient(url, ACCOUNT, KEY) as client:
                return [_outcome(lambda: client.verify(TOKEN, timeout=TIMEOUT)) for _ in range(times)]

        async def run_async() -> list[Any]:
            outcomes: list[Any] = []
            async with AsyncOktopostClient(url, ACCOUNT, KEY) as client:
                for _ in range(times):
                    try:
                        outcomes.append(await client.verify(TOKEN, timeout=TIMEOUT))
                    except UpstreamTransportError as error:
                        outcomes.append(error)
            return outcomes

        return asyncio.run(run_async())

    return run


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except UpstreamTransportError as error:
        return error


@pytest.mark.parametrize("server", ["head dribbled", "body dribbled", "never"], indirect=True)
def test_a_slow_answer_gives_up_at_the_timeout_with_a_transport_error(
    server: SlowOktopost, verify: Callable[[str, int], list[Any]]
) -> None:
    started = time.monotonic()
    [outcome] = verify(server.url, 1)
    elapsed = time.monotonic() - started

    assert isinstance(outcome, UpstreamTransportError)
    assert outcome.retryable
    assert "timeout" in outcome.kind
    assert elapsed < TIMEOUT + MARGIN


@pytest.mark.parametrize("server", ["at once"], indirect=True)
def test_fast_answers_parse_and_share_one_kept_alive_connection(
    server: SlowOktopost, verify: Callable[[str, int], list[Any]]
) -> None:
    outcomes = verify(server.url, 5)

    assert all(isinstance(outcome, VerifiedProfile) for outcome in outcomes)
    assert server.accepted == 1


@pytest.mark.parametrize("server", [("body dribbled", "at once")], indirect=True)
def test_the_call_after_a_given_up_answer_reads_its_own_answer_on_a_new_connection(
    server: SlowOktopost, verify: Callable[[str, int], list[Any]]
) -> None:
    given_up, answered = verify(server.url, 2)

    assert isinstance(given_up, UpstreamTransportError)
    assert isinstance(answered, VerifiedProfile)
    assert server.accepted == 2


@pytest.mark.parametrize("server", ["body dribbled"], indirect=True)
def test_a_slow_answer_through_the_environments_proxy_gives_up_at_the_timeout(
    server: SlowOktopost, verify: Callable[[str, int], list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.url)

    started = time.monotonic()
    [outcome] = verify("http://oktopost.invalid", 1)
    elapsed = time.monotonic() - started

    assert isinstance(outcome, UpstreamTransportError)
    assert server.requests == 1  # the proxy was asked, not the unresolvable host
    assert elapsed < TIMEOUT + MARGIN


@pytest.mark.parametrize("server", ["at once"], indirect=True)
def test_nothing_is_connected_or_sent_once_the_attempt_s_deadline_has_passed(server: SlowOktopost) -> None:
    """A process that stalls after its budget grant must not send the call after its slot ran out."""
    import httpcore

    from worker.oktopost.deadline import DeadlineBackend, end_attempt, start_attempt

    host, port = server.url.removeprefix("http://").split(":")
    backend = DeadlineBackend(httpcore.SyncBackend())
    attempt = start_attempt(0.05)
    try:
        stream = backend.connect_tcp(host, int(port), timeout=TIMEOUT)
        time.sleep(0.1)  # the process stalls past the deadline
        with pytest.raises(httpcore.WriteTimeout):
            stream.write(b"GET /v2/me HTTP/1.1\r\nHost: oktopost\r\n\r\n", timeout=TIMEOUT)
        with pytest.raises(httpcore.ConnectTimeout):
            backend.connect_tcp(host, int(port), timeout=TIMEOUT)
        stream.close()
    finally:
        end_attempt(attempt)
    time.sleep(0.1)
    assert server.requests == 0


SLOW_HOST = "oktopost.slow-resolver.test"


@pytest.fixture
def slow_lookups(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """`slow_lookups(seconds)`: from now, looking up SLOW_HOST takes that long, then finds 127.0.0.1
    (as a resolver that does not answer would, without the network)."""
    real = socket.getaddrinfo

    def answer_after(seconds: float) -> None:
        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host == SLOW_HOST:
                time.sleep(seconds)
                return real("127.0.0.1", port, *args, **kwargs)
            return real(host, port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return answer_after


@pytest.mark.parametrize("server", ["at once"], indirect=True)
def test_a_host_name_lookup_that_hangs_gives_up_at_the_timeout(
    server: SlowOktopost, slow_lookups: Callable[[float], None]
) -> None:
    slow_lookups(5 * TIMEOUT)
    url = server.url.replace("127.0.0.1", SLOW_HOST)

    started = time.monotonic()
    with OktopostClient(url, ACCOUNT, KEY) as client:
        outcome = _outcome(lambda: client.verify(TOKEN, timeout=TIMEOUT))
    elapsed = time.monotonic() - started

    assert isinstance(outcome, UpstreamTransportError)
    assert outcome.retryable
    assert "timeout" in outcome.kind
    assert elapsed < TIMEOUT + MARGIN
    assert server.accepted == 0


@pytest.mark.parametrize("server", ["at once"], indirect=True)
def test_a_host_name_looked_up_in_time_is_called(
    server: SlowOktopost, slow_lookups: Callable[[float], None]
) -> None:
    slow_lookups(TIMEOUT / 5)
    url = server.url.replace("127.0.0.1", SLOW_HOST)

    with OktopostClient(url, ACCOUNT, KEY) as client:
        outcome = _outcome(lambda: client.verify(TOKEN, timeout=TIMEOUT))

    assert isinstance(outcome, VerifiedProfile), outcome
    assert server.accepted == 1
