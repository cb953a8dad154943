"""The Oktopost client against httpx.MockTransport, sync and async: the requests it sends, its
defaults, and the arguments it refuses before sending anything."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import SecretStr

from tests.worker.mock_oktopost import (
    ACCOUNT,
    BASE,
    BASIC,
    KEY,
    PAGES,
    PROFILE,
    PUT_CREDENTIALS,
    TOKEN,
    Recorder,
    ok,
)
from worker.config.settings import Settings
from worker.oktopost import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    USER_AGENT,
    AsyncOktopostClient,
    Credential,
    Entity,
    EntityChoice,
    OktopostClient,
    VerifiedProfile,
    canonical_entity_type,
    canonical_network,
    timeout_from_settings,
)

# --- happy paths -----------------------------------------------------------------------------------


def test_start_authorization_posts_form_with_basic_auth(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(RedirectUrl="https://www.linkedin.com/oauth/v2/authorization?x=1"))
    url = call(recorder, "start_authorization", "linkedin", "https://app.example/cb/flow-1", "Page")
    assert url == "https://www.linkedin.com/oauth/v2/authorization?x=1"
    request = recorder.last
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/v2/social-authorization"
    assert request.headers["Authorization"] == BASIC
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("oktopost-connect/")
    assert parse_qs(request.content.decode()) == {
        "network": ["LinkedIn"],
        "url": ["https://app.example/cb/flow-1"],
        "type": ["page"],
    }


def test_start_authorization_type_defaults_to_profile(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(RedirectUrl="https://x.example/auth"))
    call(recorder, "start_authorization", "YouTube", "https://app.example/cb")
    assert parse_qs(recorder.last.content.decode())["type"] == ["profile"]


def test_verify_profile_gets_the_token_path(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(Credential=PROFILE))
    result = call(recorder, "verify", TOKEN)
    assert isinstance(result, VerifiedProfile)
    assert result.credential == Credential(
        id=PROFILE["Id"],
        created="2000-12-31 23:59:59",
        name="John Doe's Twitter",
        status="valid",
        network="Twitter",
        image_link="https://pbs.twimg.com/profile_images/x",
        network_username="johndoe",
    )
    request = recorder.last
    assert request.method == "GET"
    assert request.url.raw_path.decode() == f"/v2/social-authorization/{TOKEN}"
    assert request.headers["Authorization"] == BASIC
    assert request.content == b""


def test_verify_pages_offers_entities(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(token=TOKEN, data=PAGES))
    result = call(recorder, "verify", TOKEN)
    assert isinstance(result, EntityChoice)
    assert result.token == TOKEN
    assert [entity.id for entity in result.entities] == ["10795428XXXXXXXXX", "20895529XXXXXXXXX"]
    assert result.entities[0] == Entity(
        id="10795428XXXXXXXXX",
        name="Acme Inc",
        network="Facebook",
        image_link="https://graph.facebook.com/x/picture",
        network_username="acmeinc",
        is_connected=True,
    )
    assert result.entities[1].is_connected is False
    assert set(result.entities[0].model_dump()) == {
        "id",
        "name",
        "network",
        "image_link",
        "network_username",
        "is_connected",
    }


def test_verify_pages_without_echoed_token_keeps_the_one_asked_about(call: Callable[..., Any]) -> None:
    result = call(Recorder(ok(data=PAGES)), "verify", TOKEN)
    assert isinstance(result, EntityChoice)
    assert result.token == TOKEN


def test_complete_puts_ids_comma_joined_in_the_query(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(Credentials=PUT_CREDENTIALS))
    credentials = call(recorder, "complete", TOKEN, ["123456", "2343257"])
    assert [c.id for c in credentials] == ["003-001000000000000-123456", "003-001000000000000-2343257"]
    assert credentials[0].status == "valid"
    assert credentials[0].network == "Facebook"
    assert credentials[0].image_link is None
    assert credentials[0].created is None
    request = recorder.last
    assert request.method == "PUT"
    assert request.url.raw_path.decode() == f"/v2/social-authorization/{TOKEN}?ids=123456,2343257"
    assert request.headers["Authorization"] == BASIC


def test_get_credential_reads_one_back(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(Credential=PROFILE))
    credential = call(recorder, "get_credential", PROFILE["Id"])
    assert credential.id == PROFILE["Id"]
    assert credential.network_username == "johndoe"
    assert recorder.last.method == "GET"
    assert recorder.last.url.raw_path.decode() == f"/v2/credential/{PROFILE['Id']}"


def test_token_and_ids_are_url_quoted(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(Credentials=[]))
    assert call(recorder, "complete", "a/b?c", ["x y", "z&w"]) == []
    assert recorder.last.url.raw_path.decode() == "/v2/social-authorization/a%2Fb%3Fc?ids=x%20y,z%26w"


def test_unknown_extra_fields_are_tolerated(call: Callable[..., Any]) -> None:
    recorder = Recorder(
        ok(Credential={**PROFILE, "Brand": "new", "Id": 12345}, Extra={"nested": [1, 2]}, Meta=None)
    )
    result = call(recorder, "verify", TOKEN)
    assert isinstance(result, VerifiedProfile)
    assert result.credential.id == "12345"
    pages = call(Recorder(ok(token=TOKEN, data=[{**PAGES[0], "Followers": 10}], Paging={})), "verify", TOKEN)
    assert pages.entities[0].name == "Acme Inc"


def test_timeout_override_replaces_every_phase(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok(Credential=PROFILE))
    call(recorder, "verify", TOKEN, timeout=1.5)
    assert recorder.last.extensions["timeout"] == {"connect": 1.5, "read": 1.5, "write": 1.5, "pool": 1.5}
    call(recorder, "verify", TOKEN)
    assert recorder.last.extensions["timeout"] == DEFAULT_TIMEOUT.as_dict()


def test_defaults_are_explicit_objects() -> None:
    assert httpx.Timeout(connect=3.0, read=10.0, write=5.0, pool=5.0) == DEFAULT_TIMEOUT
    assert httpx.Limits(max_connections=50, max_keepalive_connections=20) == DEFAULT_LIMITS
    settings = Settings(oktopost_timeout_seconds=20)
    assert timeout_from_settings(settings) == httpx.Timeout(connect=3.0, read=20.0, write=5.0, pool=5.0)
    assert timeout_from_settings(Settings(oktopost_timeout_seconds=1)).connect == 1.0


# --- vocabulary and request validation ------------------------------------------------------------


def test_canonical_network_names() -> None:
    assert canonical_network("linkedin") == "LinkedIn"
    assert canonical_network("Youtube") == "YouTube"
    assert canonical_network("YOUTUBE") == "YouTube"
    assert canonical_network(" twitter ") == "Twitter"
    assert [canonical_network(n.upper()) for n in ("facebook", "instagram")] == ["Facebook", "Instagram"]
    for bad in ("Xing", "WeChat", "", "linked in"):
        with pytest.raises(ValueError, match="unsupported network"):
            canonical_network(bad)
    assert canonical_entity_type("Page") == "page"
    assert canonical_entity_type("GROUP") == "group"
    with pytest.raises(ValueError, match="unsupported type 'company'"):
        canonical_entity_type("company")


def test_bad_arguments_are_refused_before_any_request(call: Callable[..., Any]) -> None:
    recorder = Recorder(ok())
    for method, args, reason in (
        ("start_authorization", ("Xing", "https://app.example/cb"), "unsupported network 'Xing'"),
        ("start_authorization", ("LinkedIn", "/relative"), "must be an absolute http"),
        ("start_authorization", ("LinkedIn", "https://app.example/cb", "company"), "unsupported type"),
        ("verify", ("",), "an okt token is required"),
        ("complete", (TOKEN, []), "must be a non-empty list"),
        ("complete", (TOKEN, "123"), "not one string"),
        ("complete", (TOKEN, ["1,2"]), "without commas"),
        ("get_credential", (" ",), "a credential id is required"),
    ):
        with pytest.raises(ValueError, match=reason):
            call(recorder, method, *args)
    with pytest.raises(ValueError, match="timeout must be positive"):
        call(recorder, "verify", TOKEN, timeout=0)
    assert recorder.requests == []


def test_from_settings_uses_settings_and_transport() -> None:
    recorder = Recorder(ok(Credential=PROFILE))
    settings = Settings(
        oktopost_account_id=ACCOUNT, oktopost_api_key=SecretStr(KEY), oktopost_base_url=BASE + "/"
    )
    with OktopostClient.from_settings(settings, transport=httpx.MockTransport(recorder)) as client:
        client.get_credential("1")
    assert str(recorder.last.url) == f"{BASE}/v2/credential/1"
    assert recorder.last.headers["Authorization"] == BASIC

    async def run_async() -> None:
        async with AsyncOktopostClient.from_settings(
            settings, transport=httpx.MockTransport(recorder)
        ) as aclient:
            await aclient.get_credential("2")

    asyncio.run(run_async())
    assert str(recorder.last.url) == f"{BASE}/v2/credential/2"


def test_a_raw_json_body_is_what_the_handler_sees() -> None:
    # Guards the MockTransport plumbing the other tests rely on: the body arrives form-encoded, not JSON.
    recorder = Recorder(ok(RedirectUrl="https://x.example"))
    with OktopostClient(BASE, ACCOUNT, KEY, transport=httpx.MockTransport(recorder)) as client:
        client.start_authorization("Twitter", "https://app.example/cb")
    with pytest.raises(json.JSONDecodeError):
        json.loads(recorder.last.content)
