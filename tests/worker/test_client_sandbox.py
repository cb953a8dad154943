"""The Oktopost client against a real sandbox process over real sockets: every step of both flows,
the refusals (expired token, bad key, unknown id) and the sandbox's injected faults."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox.client import SandboxControl
from tests.support.processes import Process, free_port, start_cli, wait_for_port
from worker.oktopost import AsyncOktopostClient, EntityChoice, OktopostClient, VerifiedProfile
from worker.oktopost.errors import (
    MalformedAnswerError,
    RejectedError,
    ServerError,
    ThrottledError,
    TokenInvalidError,
    UnauthorizedError,
    UpstreamTransportError,
)

pytestmark = pytest.mark.integration

ACCOUNT, KEY = "demo-account", "demo-key"
CALLBACK = "https://app.example/v1/callback/flow-1"


class Sandbox(SandboxControl):
    def __init__(self, *flags: str) -> None:
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.process: Process = start_cli(["sandbox", "--port", str(self.port), *flags], name="sandbox")
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.process.stop()
            raise AssertionError(f"the sandbox did not start:\n{self.process.output}") from None

    def client(self, key: str = KEY, **options: Any) -> OktopostClient:
        return OktopostClient(self.url, ACCOUNT, key, **options)

    def stop(self) -> None:
        self.process.stop()


def approve(redirect_url: str) -> str:
    """Step 2 as the user's browser does it, without following on to the callback: the 303's okt."""
    # params= would replace the page's own query (request=ID), so the decision is added to it.
    consent = httpx.get(httpx.URL(redirect_url).copy_add_param("decision", "approve"), follow_redirects=False)
    assert consent.status_code == 303, consent.text
    location = httpx.URL(consent.headers["location"])
    assert str(location).startswith(CALLBACK)
    return str(location.params["okt"])


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    running = Sandbox()
    yield running
    running.stop()


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[OktopostClient]:
    with sandbox.client() as client:
        yield client


def test_profile_flow_start_approve_verify_read_back(client: OktopostClient, sandbox: Sandbox) -> None:
    redirect_url = client.start_authorization("linkedin", CALLBACK)
    assert redirect_url.startswith(f"{sandbox.url}/oauth/authorize?")
    token = approve(redirect_url)
    verified = client.verify(token)
    assert isinstance(verified, VerifiedProfile)
    credential = verified.credential
    assert credential.network == "LinkedIn"
    assert credential.status == "valid"
    assert credential.id
    assert client.get_credential(credential.id) == credential
    # Verifying again is idempotent upstream, which is what makes our retries safe.
    assert client.verify(token) == verified
    assert credential.id in {c["Id"] for c in sandbox.connections()}


@pytest.mark.parametrize("entity_type", ["page", "group"])
def test_page_and_group_flow_verify_offers_then_complete_connects(
    client: OktopostClient, entity_type: str
) -> None:
    token = approve(client.start_authorization("Facebook", CALLBACK, entity_type))
    choice = client.verify(token)
    assert isinstance(choice, EntityChoice)
    assert choice.token == token
    assert len(choice.entities) >= 3
    assert choice.entities[0].is_connected is True
    assert all(entity.network == "Facebook" for entity in choice.entities)
    picked = [entity.id for entity in choice.entities[1:3]]
    credentials = client.complete(token, picked)
    assert [c.name for c in credentials] == [e.name for e in choice.entities[1:3]]
    assert all(c.status == "valid" and c.network == "Facebook" for c in credentials)
    assert client.complete(token, picked) == credentials  # a repeated PUT answers the same
    for credential in credentials:
        assert client.get_credential(credential.id).id == credential.id


def test_async_client_does_every_step(sandbox: Sandbox) -> None:
    async def flow() -> None:
        async with AsyncOktopostClient(sandbox.url, ACCOUNT, KEY) as client:
            profile_token = approve(await client.start_authorization("Youtube", CALLBACK))
            verified = await client.verify(profile_token)
            assert isinstance(verified, VerifiedProfile)
            assert verified.credential.network == "YouTube"
            assert (await client.get_credential(verified.credential.id)).id == verified.credential.id
            token = approve(await client.start_authorization("LinkedIn", CALLBACK, "group"))
            choice = await client.verify(token)
            assert isinstance(choice, EntityChoice)
            credentials = await client.complete(token, [choice.entities[0].id])
            assert len(credentials) == 1
            with pytest.raises(TokenInvalidError):
                await client.verify("0000000000000.unknown")

    asyncio.run(flow())


def test_unknown_token_is_token_invalid(client: OktopostClient) -> None:
    with pytest.raises(TokenInvalidError) as caught:
        client.verify("591c6053d81978.000000000000000000000000000000000000000")
    assert caught.value.status == 404
    assert not caught.value.retryable
    assert caught.value.messages == ["Token is invalid or has expired"]
    with pytest.raises(TokenInvalidError):
        client.complete("591c6053d81978.000000000000000000000000000000000000000", ["1"])


def test_expired_token_is_token_invalid() -> None:
    short = Sandbox("--token-ttl", "1")
    try:
        with short.client() as client:
            token = approve(client.start_authorization("Facebook", CALLBACK, "page"))
            choice = client.verify(token)
            assert isinstance(choice, EntityChoice)
            time.sleep(1.5)
            with pytest.raises(TokenInvalidError) as caught:
                client.verify(token)
            assert caught.value.code == "token_invalid"
            assert token not in str(caught.value)
            with pytest.raises(TokenInvalidError):
                client.complete(token, [choice.entities[0].id])
    finally:
        short.stop()


def test_bad_credentials_are_unauthorized(sandbox: Sandbox) -> None:
    with sandbox.client(key="wrong-key") as client:
        with pytest.raises(UnauthorizedError) as caught:
            client.start_authorization("LinkedIn", CALLBACK)
        assert caught.value.status == 401
        assert caught.value.code == "unauthorized"
        assert "wrong-key" not in str(caught.value)
        with pytest.raises(UnauthorizedError):
            client.verify("591c6053d81978.1157844686727965733")


def test_unknown_ids_are_rejected(client: OktopostClient) -> None:
    with pytest.raises(RejectedError) as caught:
        client.get_credential("003-001000000000000-nope")
    assert type(caught.value) is RejectedError
    assert caught.value.status == 404
    assert caught.value.messages == ["Credential not found"]
    token = approve(client.start_authorization("Facebook", CALLBACK, "page"))
    assert isinstance(client.verify(token), EntityChoice)
    with pytest.raises(RejectedError) as unknown_entity:
        client.complete(token, ["not-an-offered-id"])
    assert type(unknown_entity.value) is RejectedError
    assert unknown_entity.value.status == 400


def test_refused_connection_is_a_transport_error() -> None:
    with (
        OktopostClient(f"http://127.0.0.1:{free_port()}", ACCOUNT, KEY) as client,
        pytest.raises(UpstreamTransportError) as caught,
    ):
        client.verify("591c6053d81978.1157844686727965733")
    assert caught.value.kind == "connection failed"
    assert caught.value.retryable
    assert "127.0.0.1" not in str(caught.value)


def test_no_token_or_key_in_real_http_logs(client: OktopostClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = approve(client.start_authorization("Facebook", CALLBACK, "page"))
    choice = client.verify(token)
    assert isinstance(choice, EntityChoice)
    client.complete(token, [choice.entities[1].id])
    assert any(record.name.startswith("httpcore") for record in caplog.records)
    assert "/v2/social-authorization/***" in caplog.text
    assert token not in caplog.text
    assert KEY not in caplog.text


# --- the sandbox's faults, as the pipeline will meet them -------------------------------------------


@pytest.fixture
def faulty(sandbox: Sandbox) -> Iterator[Sandbox]:
    yield sandbox
    sandbox.set_faults(
        latency_ms=0, error_rate=0, throttle_rate=0, timeout_rate=0, drop_rate=0, malformed_rate=0
    )


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        ({"error_rate": 1}, ServerError),
        ({"throttle_rate": 1, "retry_after_s": 3, "throttle_scope": "request"}, ThrottledError),
        ({"malformed_rate": 1}, MalformedAnswerError),
        ({"drop_rate": 1}, UpstreamTransportError),
        ({"timeout_rate": 1}, UpstreamTransportError),
    ],
    ids=["503", "429", "malformed", "dropped", "hung"],
)
def test_injected_faults_are_transient(
    faulty: Sandbox, faults: dict[str, Any], expected: type[Exception]
) -> None:
    with faulty.client() as client:
        faulty.set_faults(**faults)
        with pytest.raises(expected) as caught:
            client.get_credential("003-001000000000000-anything", timeout=1.0)
    error = caught.value
    assert getattr(error, "retryable", False) is True
    assert getattr(error, "code", "") == "upstream_unavailable"
    if isinstance(error, ThrottledError):
        assert error.retry_after == 3
    if "drop_rate" in faults:
        assert isinstance(error, UpstreamTransportError)
        assert error.kind == "connection closed without an answer"
    if "timeout_rate" in faults:
        assert isinstance(error, UpstreamTransportError)
        assert error.kind == "read timeout"


def connect_profile(client: OktopostClient, network: str = "LinkedIn") -> str:
    verified = client.verify(approve(client.start_authorization(network, CALLBACK)))
    assert isinstance(verified, VerifiedProfile)
    return verified.credential.id


def test_list_credentials_reads_every_page_with_invalid_ones(
    client: OktopostClient, sandbox: Sandbox
) -> None:
    httpx.post(f"{sandbox.url}/_sandbox/reset").raise_for_status()
    connected = [connect_profile(client) for _ in range(27)]
    httpx.post(f"{sandbox.url}/_sandbox/credentials/{connected[3]}/invalidate").raise_for_status()
    first, second = client.list_credentials(0, 25), client.list_credentials(1, 25)
    assert first.total == second.total == 27
    listed = {credential.id: credential.status for credential in first.items + second.items}
    assert list(listed) == connected
    assert listed[connected[3]] == "invalid"
    assert client.list_credentials(0, 25, include_invalid=False).total == 26


def test_delete_credential_removes_it_and_a_second_delete_finds_it_gone(
    client: OktopostClient, sandbox: Sandbox
) -> None:
    credential_id = connect_profile(client)
    assert client.delete_credential(credential_id) is True
    assert client.delete_credential(credential_id) is False
    assert credential_id not in {c["Id"] for c in sandbox.connections()}
    with pytest.raises(RejectedError):
        client.get_credential(credential_id)


def test_async_client_lists_and_deletes(sandbox: Sandbox, client: OktopostClient) -> None:
    credential_id = connect_profile(client, "Twitter")

    async def calls() -> None:
        async with AsyncOktopostClient(sandbox.url, ACCOUNT, KEY) as api:
            listed = await api.list_credentials(0, 100)
            assert credential_id in {credential.id for credential in listed.items}
            assert await api.delete_credential(credential_id) is True

    asyncio.run(calls())
    assert credential_id not in {c["Id"] for c in sandbox.connections()}


@pytest.mark.parametrize("faults", [{"error_rate": 1.0}, {"malformed_rate": 1.0}, {"reject_rate": 1.0}])
def test_a_faulty_list_or_delete_raises_from_the_error_tree(sandbox: Sandbox, faults: dict[str, Any]) -> None:
    expected = (ServerError, MalformedAnswerError, RejectedError)
    with sandbox.client() as client:
        sandbox.set_faults(**faults)
        try:
            with pytest.raises(expected):
                client.list_credentials()
            with pytest.raises(expected):
                client.delete_credential("003-001000000000000-1")
        finally:
            httpx.post(f"{sandbox.url}/_sandbox/reset").raise_for_status()
