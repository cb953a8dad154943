"""The sandbox's `/v2/credential` routes over what it has connected, its controls that break or remove a
credential behind the pipeline's back, and reconnecting a profile in place with the consent page's `as=`."""

from __future__ import annotations

import httpx
import pytest

from tests.support.sandboxes import CALLBACK, RunningSandbox, decide

pytestmark = pytest.mark.integration


def connect_profile(sandbox: RunningSandbox, api: httpx.Client, network: str = "LinkedIn") -> str:
    token = sandbox.authorize(api, network)
    answer = api.get(f"/v2/social-authorization/{token}").json()
    return str(answer["Credential"]["Id"])


def connect_pages(api: httpx.Client, sandbox: RunningSandbox, count: int) -> list[str]:
    token = sandbox.authorize(api, "Facebook", "page")
    offered = api.get(f"/v2/social-authorization/{token}").json()["data"]
    ids = ",".join(entity["Id"] for entity in offered[:count])
    credentials = api.put(f"/v2/social-authorization/{token}?ids={ids}").json()["Credentials"]
    return [credential["Id"] for credential in credentials]


def test_list_pages_through_connected_credentials(sandbox: RunningSandbox, api: httpx.Client) -> None:
    profiles = [connect_profile(sandbox, api) for _ in range(27)]
    first = api.get("/v2/credential", params={"_count": 25}).json()
    second = api.get("/v2/credential", params={"_count": 25, "_page": 1}).json()
    assert first["Result"] is True
    assert first["Total"] == 27 == second["Total"]
    listed = [item["Id"] for item in first["Items"] + second["Items"]]
    assert listed == profiles
    assert {"Id", "Name", "Status", "Network", "Created"} <= set(first["Items"][0])


def test_list_filters_by_network_and_hides_invalid_unless_asked(
    sandbox: RunningSandbox, api: httpx.Client
) -> None:
    profile = connect_profile(sandbox, api, "Twitter")
    pages = connect_pages(api, sandbox, 2)
    assert httpx.post(f"{sandbox.url}/_sandbox/credentials/{pages[0]}/invalidate").status_code == 200

    def listed(**params: str) -> list[tuple[str, str]]:
        items = api.get("/v2/credential", params=params).json()["Items"]
        return [(item["Id"], item["Status"]) for item in items]

    assert listed() == [(profile, "valid"), (pages[1], "valid")]
    assert listed(includeInvalid="1", network="Facebook") == [(pages[0], "invalid"), (pages[1], "valid")]
    assert listed(network="Twitter") == [(profile, "valid")]


@pytest.mark.parametrize(
    "params", [{"_count": "10"}, {"_page": "-1"}, {"includeInvalid": "yes"}, {"network": "linkedin"}]
)
def test_list_refuses_bad_parameters(api: httpx.Client, params: dict[str, str]) -> None:
    answer = api.get("/v2/credential", params=params)
    assert answer.status_code == 400
    assert answer.json()["Result"] is False


def test_read_and_delete_one_credential(sandbox: RunningSandbox, api: httpx.Client) -> None:
    credential_id = connect_profile(sandbox, api)
    assert api.get(f"/v2/credential/{credential_id}").json()["Credential"]["Id"] == credential_id
    assert api.delete(f"/v2/credential/{credential_id}").json() == {"Result": True}
    for answer in (api.get(f"/v2/credential/{credential_id}"), api.delete(f"/v2/credential/{credential_id}")):
        assert answer.status_code == 404
        assert answer.json()["Result"] is False
    assert sandbox.connections() == []


def test_credential_calls_are_api_calls(sandbox: RunningSandbox, api: httpx.Client) -> None:
    assert httpx.get(f"{sandbox.url}/v2/credential", auth=("demo-account", "wrong")).status_code == 401
    before = sandbox.stats()["accounts"]["demo-account"]["calls"]
    api.get("/v2/credential")
    api.get("/v2/credential/003-001000000000000-1")
    assert sandbox.stats()["accounts"]["demo-account"]["calls"] == before + 2
    sandbox.set_faults(error_rate=1.0)
    assert api.get("/v2/credential").status_code == 503


def test_controls_invalidate_and_remove_known_credentials_only(
    sandbox: RunningSandbox, api: httpx.Client
) -> None:
    credential_id = connect_profile(sandbox, api)
    control = f"{sandbox.url}/_sandbox/credentials"
    assert httpx.post(f"{control}/{credential_id}/invalidate").status_code == 200
    assert api.get(f"/v2/credential/{credential_id}").json()["Credential"]["Status"] == "invalid"
    assert httpx.post(f"{control}/{credential_id}/remove").status_code == 200
    assert api.get(f"/v2/credential/{credential_id}").status_code == 404
    for action in ("invalidate", "remove"):
        assert httpx.post(f"{control}/{credential_id}/{action}").status_code == 404


def test_consent_as_reconnects_a_profile_in_place(sandbox: RunningSandbox, api: httpx.Client) -> None:
    credential_id = connect_profile(sandbox, api)
    httpx.post(f"{sandbox.url}/_sandbox/credentials/{credential_id}/invalidate").raise_for_status()
    started = api.post("/v2/social-authorization", data={"network": "LinkedIn", "url": CALLBACK})
    network_id = credential_id.rsplit("-", 1)[1]
    consent = decide(f"{started.json()['RedirectUrl']}&as={network_id}", "approve")
    token = httpx.URL(consent.headers["location"]).params["okt"]
    credential = api.get(f"/v2/social-authorization/{token}").json()["Credential"]
    assert (credential["Id"], credential["Status"]) == (credential_id, "valid")
    assert len(sandbox.connections()) == 1


def test_consent_as_another_networks_profile_connects_a_profile_of_its_own(
    sandbox: RunningSandbox, api: httpx.Client
) -> None:
    twitter = connect_profile(sandbox, api, "Twitter")
    started = api.post("/v2/social-authorization", data={"network": "LinkedIn", "url": CALLBACK})
    consent = decide(f"{started.json()['RedirectUrl']}&as={twitter.rsplit('-', 1)[1]}", "approve")
    token = httpx.URL(consent.headers["location"]).params["okt"]
    credential = api.get(f"/v2/social-authorization/{token}").json()["Credential"]
    assert credential["Network"] == "LinkedIn"
    assert credential["Id"] != twitter
    assert len(sandbox.connections()) == 2


def test_connecting_an_invalid_page_again_makes_it_valid(sandbox: RunningSandbox, api: httpx.Client) -> None:
    [page] = connect_pages(api, sandbox, 1)
    httpx.post(f"{sandbox.url}/_sandbox/credentials/{page}/invalidate").raise_for_status()
    assert connect_pages(api, sandbox, 1) == [page]
    assert api.get(f"/v2/credential/{page}").json()["Credential"]["Status"] == "valid"


def test_seeding_connects_many_profiles_at_once_without_an_api_call(
    sandbox: RunningSandbox, api: httpx.Client
) -> None:
    seeded = httpx.post(f"{sandbox.url}/_sandbox/credentials", json={"count": 120, "network": "Twitter"})
    assert seeded.status_code == 200
    ids = seeded.json()["Ids"]
    assert len(set(ids)) == 120
    assert sandbox.stats()["calls"] == 0
    assert api.get("/v2/credential", params={"_count": 100, "_page": 1}).json()["Total"] == 120
    refused = httpx.post(f"{sandbox.url}/_sandbox/credentials", json={"count": 0})
    assert refused.status_code == 400
