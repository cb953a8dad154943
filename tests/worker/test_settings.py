"""Settings refused at start-up: weak or placeholder caller keys, cleartext URLs off loopback; Oktopost's
documented base URL with /v2 accepted."""

from __future__ import annotations

import pytest

from worker.config.settings import ConfigError, load_settings

STRONG = "a-caller-key-long-enough-0123"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"shim_api_keys": "short-key"}, "SHIM_API_KEYS: a caller key must be at least 24"),
        ({"shim_api_keys": f"{STRONG},change-me-to-a-long-random-key"}, "SHIM_API_KEYS: a caller key is"),
        ({"oktopost_base_url": "http://api.oktopost.com"}, "OKTOPOST_BASE_URL: must be https"),
        ({"public_base_url": "http://connect.example.com"}, "PUBLIC_BASE_URL: must be https"),
        ({"oktopost_base_url": "https://api.oktopost.com/v3"}, "OKTOPOST_BASE_URL: expected Oktopost's"),
        ({"redis_url": "http://127.0.0.1:6379/0"}, "REDIS_URL: expected a URL such as redis://"),
        ({"redis_url": "redis://127.0.0.1:notaport/0"}, "REDIS_URL: .*its port is not a number"),
        ({"redis_url": "redis://:s3cret@127.0.0.1:6379/abc"}, "REDIS_URL: .*its database is not a number"),
        ({"celery_broker_url": "foo://bar"}, "CELERY_BROKER_URL: expected a broker URL"),
        ({"celery_broker_url": "redis://h:x/0"}, "CELERY_BROKER_URL: .*its port is not a number"),
        ({"oktopost_account_id": "has space"}, "OKTOPOST_ACCOUNT_ID: expected letters, digits"),
        ({"oktopost_account_id": "a{b}"}, "OKTOPOST_ACCOUNT_ID: expected letters, digits"),
        ({"oktopost_api_key": " "}, "OKTOPOST_API_KEY: must not be empty"),
        ({"allow_http_hosts": "http://bad host/"}, "ALLOW_HTTP_HOSTS: expected host names"),
        ({"webhook_allowed_hosts": "hooks.example:8443"}, "WEBHOOK_ALLOWED_HOSTS: expected host names"),
    ],
)
def test_refused_with_one_line_naming_the_setting(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named) as refused:
        load_settings(**({"shim_api_keys": STRONG} | overrides))
    assert "\n" not in str(refused.value)
    assert "change-me" not in str(refused.value)  # a key is never repeated back
    assert "s3cret" not in str(refused.value)  # nor a URL's password


@pytest.mark.parametrize(
    "overrides",
    [
        {"redis_url": "redis://:pw@redis.internal:6380/2"},
        {"redis_url": "rediss://redis.internal/0"},
        {"redis_url": "unix:///run/redis.sock?db=1"},
        {"celery_broker_url": "amqp://guest:guest@127.0.0.1:5672//"},
        {"oktopost_account_id": "acct_01.eu@partner-x"},
        {"allowed_return_urls": "https://app.example/,http://127.0.0.1:9000,https://app.example/done"},
        {"webhook_allowed_hosts": "127.0.0.1,::1,[::1],hooks.internal,fe80::1%eth0"},
    ],
)
def test_accepted_as_the_docs_show_them(overrides: dict[str, str]) -> None:
    assert load_settings(**({"shim_api_keys": STRONG} | overrides))


@pytest.mark.parametrize(
    "url", ["https://api.oktopost.com/v2", "https://api.oktopost.com/v2/", "https://api.oktopost.com"]
)
def test_oktopost_base_url_with_or_without_v2_means_the_same(url: str) -> None:
    assert load_settings(oktopost_base_url=url).oktopost_base_url == "https://api.oktopost.com"


@pytest.mark.parametrize(
    "overrides",
    [
        {"public_base_url": "http://127.0.0.1:8000", "oktopost_base_url": "http://localhost:8090"},
        {"public_base_url": "http://[::1]:8000"},
        {"oktopost_base_url": "http://sandbox:8090", "allow_http_hosts": "sandbox"},
    ],
)
def test_cleartext_is_allowed_on_loopback_and_listed_hosts(overrides: dict[str, str]) -> None:
    load_settings(**overrides)
