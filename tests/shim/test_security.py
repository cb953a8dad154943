"""Where the shim may send a browser back to, with no HTTP: plain http only on a loopback host, the same
loopback the settings and webhook URLs are checked against."""

from __future__ import annotations

import pytest

from api_shim.errors import ApiError
from api_shim.security import check_return_url, return_url_with
from worker.config.settings import is_loopback


@pytest.mark.parametrize(
    "host", ["localhost", "app.localhost", "a.b.localhost", "127.0.0.1", "127.8.0.1", "[::1]"]
)
def test_localhost_names_under_it_and_loopback_addresses_are_loopback(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["localhost.example", "notlocalhost", "app.example", "10.0.0.1", "[::2]", ""]
)
def test_other_names_and_addresses_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_an_allowed_return_url_may_use_http_on_a_name_under_localhost() -> None:
    # RFC 6761: `app.localhost` is loopback, as `localhost` is, for the settings and webhooks too
    url = "http://app.localhost:3000/done?x=1"
    assert check_return_url(url, ["http://app.localhost:3000"]) == url


def test_an_allowed_return_url_must_use_https_on_a_name_that_only_looks_local() -> None:
    with pytest.raises(ApiError) as refused:
        check_return_url("http://app.localhost.example:3000/done", ["http://app.localhost.example:3000"])
    assert (refused.value.status, refused.value.code) == (422, "return_url_not_allowed")


def test_the_flows_own_query_keys_take_the_place_of_the_callers_of_the_same_name() -> None:
    back = return_url_with("https://app.example/done?a=b&flow_id=old&status=x&state=s0", "f1", "completed")
    assert back == "https://app.example/done?a=b&state=s0&flow_id=f1&status=completed"
    with_state = return_url_with("https://app.example/done?state=s0&tab=1", "f1", "denied", "s1")
    assert with_state == "https://app.example/done?tab=1&flow_id=f1&status=denied&state=s1"
