"""The reference's own requests against a real sandbox process, checked field by field."""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser

import httpx
import pytest

from tests.support.sandboxes import ACCOUNT, CALLBACK, RunningSandbox, decide

pytestmark = pytest.mark.integration

TOKEN = re.compile(r"^[0-9a-f]{14}\.[0-9a-f]{40}$")
CREDENTIAL_ID = re.compile(r"^003-001000000000000-\d+$")
CREATED = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
PROFILE_FIELDS = {"Id", "Created", "Name", "DisplayName", "Status", "Network", "ImageLink", "NetworkUsername"}
ENTITY_FIELDS = {"Id", "Name", "Network", "ImageLink", "NetworkUsername", "IsConnected"}


class FormParser(HTMLParser):
    """Collects each <form>'s method, action and named inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, object]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "form":
            self.forms.append(
                {"method": attributes.get("method"), "action": attributes.get("action"), "inputs": {}}
            )
        elif tag in ("input", "button") and self.forms and attributes.get("name"):
            inputs = self.forms[-1]["inputs"]
            assert isinstance(inputs, dict)
            inputs[attributes["name"]] = attributes.get("value", "")


def submit(client: httpx.Client, page_url: str, form: dict[str, object]) -> httpx.Response:
    """What a browser does with a GET form: the action resolved against the page, the inputs as the query."""
    assert str(form["method"]).lower() == "get"
    target = httpx.URL(page_url).join(str(form["action"]))
    inputs = form["inputs"]
    assert isinstance(inputs, dict)
    return client.get(target, params=inputs)


def test_step1_form_post_answers_redirect_url_on_the_request_host(
    api: httpx.Client, sandbox: RunningSandbox
) -> None:
    response = api.post(
        "/v2/social-authorization", data={"network": "LinkedIn", "url": CALLBACK, "type": "profile"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"Result", "RedirectUrl"}
    assert body["Result"] is True
    redirect = httpx.URL(body["RedirectUrl"])
    assert (redirect.scheme, redirect.host, redirect.port) == ("http", "127.0.0.1", sandbox.port)
    assert redirect.path == "/oauth/authorize"
    assert redirect.params["request"]

    other_host = api.post(
        "/v2/social-authorization",
        data={"network": "LinkedIn", "url": CALLBACK},
        headers={"Host": "sandbox:8090"},
    )
    assert other_host.json()["RedirectUrl"].startswith("http://sandbox:8090/oauth/authorize?request=")


def test_reference_curl_command_runs_against_the_sandbox(sandbox: RunningSandbox) -> None:
    account_id, api_key = ACCOUNT
    completed = subprocess.run(
        [
            "curl", "-s", "-u", f"{account_id}:{api_key}",
            f"{sandbox.url}/v2/social-authorization", "-X", "POST",
            "-d", "network=LinkedIn", "-d", "url=https://yourapp.com/callback", "-d", "type=profile",
        ],
        capture_output=True, check=True, text=True, timeout=10,
    )  # fmt: skip
    body = json.loads(completed.stdout)
    assert body["Result"] is True
    assert body["RedirectUrl"].startswith(f"{sandbox.url}/oauth/authorize?request=")

    consent = decide(body["RedirectUrl"], "approve")
    token = httpx.URL(consent.headers["location"]).params["okt"]
    verified = subprocess.run(
        ["curl", "-s", "-u", f"{account_id}:{api_key}", f"{sandbox.url}/v2/social-authorization/{token}"],
        capture_output=True, check=True, text=True, timeout=10,
    )  # fmt: skip
    assert json.loads(verified.stdout)["Credential"]["Network"] == "LinkedIn"


def test_profile_flow_matches_the_reference_shapes(api: httpx.Client, sandbox: RunningSandbox) -> None:
    token = sandbox.authorize(api, "Twitter", "profile")
    assert TOKEN.match(token)

    response = api.get(f"/v2/social-authorization/{token}")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"Result", "Credential"}
    assert body["Result"] is True
    credential = body["Credential"]
    assert set(credential) == PROFILE_FIELDS
    assert CREDENTIAL_ID.match(credential["Id"])
    assert CREATED.match(credential["Created"])
    assert credential["Name"].endswith("'s Twitter")
    assert credential["Status"] == "valid"
    assert credential["Network"] == "Twitter"
    assert credential["ImageLink"].startswith("https://")
    assert credential["NetworkUsername"]


def test_page_flow_lists_entities_then_connects_the_chosen_ids(
    api: httpx.Client, sandbox: RunningSandbox
) -> None:
    token = sandbox.authorize(api, "Facebook", "page")

    listed = api.get(f"/v2/social-authorization/{token}")
    assert listed.status_code == 200
    body = listed.json()
    assert set(body) == {"Result", "token", "data"}
    assert body["Result"] is True
    assert body["token"] == token
    entities = body["data"]
    assert len(entities) >= 3
    for entity in entities:
        assert set(entity) == ENTITY_FIELDS
        assert entity["Network"] == "Facebook"
        assert entity["Id"].isdigit()
    assert [entity["IsConnected"] for entity in entities][:3] == [True, False, False]

    chosen = [entities[0]["Id"], entities[1]["Id"]]
    completed = api.put(f"/v2/social-authorization/{token}?ids={','.join(chosen)}")
    assert completed.status_code == 200
    body = completed.json()
    assert set(body) == {"Result", "Credentials"}
    assert body["Result"] is True
    assert body["Credentials"] == [
        {"Id": f"003-001000000000000-{entities[0]['Id']}", "Name": entities[0]["Name"],
         "DisplayName": entities[0]["Name"], "Status": "valid",
         "Network": "Facebook"},
        {"Id": f"003-001000000000000-{entities[1]['Id']}", "Name": entities[1]["Name"],
         "DisplayName": entities[1]["Name"], "Status": "valid",
         "Network": "Facebook"},
    ]  # fmt: skip


def test_put_reads_ids_from_the_query_string_only(api: httpx.Client, sandbox: RunningSandbox) -> None:
    token = sandbox.authorize(api, "LinkedIn", "group")
    first = api.get(f"/v2/social-authorization/{token}").json()["data"][0]
    in_body = api.put(f"/v2/social-authorization/{token}", data={"ids": first["Id"]})
    assert in_body.status_code == 400
    assert in_body.json() == {
        "Result": False,
        "Errors": {"Param": {"ids": "Missing value for parameter ids"}},
    }
    assert sandbox.connections() == []
    in_query = api.put(f"/v2/social-authorization/{token}?ids={first['Id']}")
    assert [c["Name"] for c in in_query.json()["Credentials"]] == [first["Name"]]


@pytest.mark.parametrize("network", ["Twitter", "Facebook", "LinkedIn", "YouTube", "Instagram"])
def test_networks_spelled_as_the_reference_are_accepted(
    api: httpx.Client, sandbox: RunningSandbox, network: str
) -> None:
    token = sandbox.authorize(api, network, "page")
    names = {entity["Network"] for entity in api.get(f"/v2/social-authorization/{token}").json()["data"]}
    assert names == {network}


@pytest.mark.parametrize("network", ["linkedin", "LINKEDIN", "Linkedin", "twitter", "Youtube", " LinkedIn"])
def test_any_other_spelling_of_a_network_is_refused(api: httpx.Client, network: str) -> None:
    refused = api.post("/v2/social-authorization", data={"network": network, "url": CALLBACK})
    assert refused.status_code == 400
    body = refused.json()
    assert body["Result"] is False
    assert list(body["Errors"]["Param"]) == ["network"]


def test_entity_types_are_taken_in_lower_case_only(api: httpx.Client) -> None:
    form = {"network": "LinkedIn", "url": CALLBACK, "type": "Page"}
    refused = api.post("/v2/social-authorization", data=form)
    assert refused.status_code == 400
    assert list(refused.json()["Errors"]["Param"]) == ["type"]


def test_consent_page_has_working_approve_and_deny_forms(sandbox: RunningSandbox) -> None:
    with sandbox.client() as api, httpx.Client() as browser:
        for decision, callback in (
            ("approve", CALLBACK + "?user=42&lang=en"),
            ("deny", CALLBACK + "?user=42"),
        ):
            started = api.post(
                "/v2/social-authorization", data={"network": "Instagram", "url": callback, "type": "page"}
            )
            page_url = started.json()["RedirectUrl"]
            page = browser.get(page_url)
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert "Instagram" in page.text
            assert "page" in page.text
            parser = FormParser()
            parser.feed(page.text)
            forms = {form["inputs"]["decision"]: form for form in parser.forms}  # type: ignore[index]
            assert set(forms) == {"approve", "deny"}

            answer = submit(browser, page_url, forms[decision])
            assert answer.status_code == 303
            assert answer.headers["location"].startswith(callback + "&")  # the existing query kept as it was
            location = httpx.URL(answer.headers["location"])
            assert location.params["user"] == "42"
            if decision == "approve":
                assert TOKEN.match(location.params["okt"])
                assert location.params["lang"] == "en"
            else:
                assert "okt" not in location.params
                assert location.params["error"] == "access_denied"


def test_consent_decisions_are_final_and_repeatable(sandbox: RunningSandbox) -> None:
    with sandbox.client() as api:
        redirect = api.post("/v2/social-authorization", data={"network": "LinkedIn", "url": CALLBACK}).json()[
            "RedirectUrl"
        ]
        first = decide(redirect, "approve")
        again = decide(redirect, "approve")
        assert first.status_code == again.status_code == 303
        assert first.headers["location"] == again.headers["location"]  # same token
        assert decide(redirect, "deny").status_code == 409

        denied = api.post("/v2/social-authorization", data={"network": "LinkedIn", "url": CALLBACK}).json()[
            "RedirectUrl"
        ]
        assert decide(denied, "deny").status_code == 303
        assert decide(denied, "deny").status_code == 303
        assert decide(denied, "approve").status_code == 409


def test_consent_page_refuses_unknown_requests_and_bad_decisions(sandbox: RunningSandbox) -> None:
    unknown = httpx.get(f"{sandbox.url}/oauth/authorize", params={"request": "nope"})
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("text/html")
    assert httpx.get(f"{sandbox.url}/oauth/authorize").status_code == 400
    with sandbox.client() as api:
        redirect = api.post("/v2/social-authorization", data={"network": "LinkedIn", "url": CALLBACK}).json()[
            "RedirectUrl"
        ]
    assert decide(redirect, "maybe").status_code == 400
    assert httpx.post(redirect).status_code == 405


def test_verify_and_put_are_idempotent_and_count_calls(api: httpx.Client, sandbox: RunningSandbox) -> None:
    profile_token = sandbox.authorize(api, "LinkedIn", "profile")
    first = api.get(f"/v2/social-authorization/{profile_token}").json()
    assert api.get(f"/v2/social-authorization/{profile_token}").json() == first

    page_token = sandbox.authorize(api, "YouTube", "page")
    entities = api.get(f"/v2/social-authorization/{page_token}").json()["data"]
    assert api.get(f"/v2/social-authorization/{page_token}").json()["data"] == entities
    ids = f"{entities[1]['Id']},{entities[2]['Id']}"
    put = api.put(f"/v2/social-authorization/{page_token}?ids={ids}").json()
    assert api.put(f"/v2/social-authorization/{page_token}?ids={ids}").json() == put

    connections = {c["Id"]: c for c in sandbox.connections()}
    assert set(connections) == {first["Credential"]["Id"], *(c["Id"] for c in put["Credentials"])}
    assert connections[first["Credential"]["Id"]] == {
        "Id": first["Credential"]["Id"],
        "Account": "demo-account",
        "Network": "LinkedIn",
        "Name": first["Credential"]["Name"],
        "DisplayName": first["Credential"]["DisplayName"],
        "Type": "profile",
        "Status": "valid",
        "Created": first["Credential"]["Created"],
        "calls": 2,
    }
    for credential in put["Credentials"]:
        assert connections[credential["Id"]]["calls"] == 2
        assert connections[credential["Id"]]["Network"] == "YouTube"


def test_connected_credentials_read_back(api: httpx.Client, sandbox: RunningSandbox) -> None:
    token = sandbox.authorize(api, "Instagram", "profile")
    credential = api.get(f"/v2/social-authorization/{token}").json()["Credential"]
    read = api.get(f"/v2/credential/{credential['Id']}")
    assert read.status_code == 200
    assert read.json() == {"Result": True, "Credential": credential}

    page_token = sandbox.authorize(api, "LinkedIn", "page")
    entity = api.get(f"/v2/social-authorization/{page_token}").json()["data"][2]
    page_credential = api.put(f"/v2/social-authorization/{page_token}?ids={entity['Id']}").json()[
        "Credentials"
    ][0]
    read_page = api.get(f"/v2/credential/{page_credential['Id']}").json()
    assert read_page["Result"] is True
    assert read_page["Credential"]["Name"] == entity["Name"]
    assert read_page["Credential"]["Status"] == "valid"

    unknown = api.get("/v2/credential/003-001000000000000-1")
    assert unknown.status_code == 404
    assert unknown.json()["Result"] is False


def test_reset_clears_tokens_connections_and_faults(api: httpx.Client, sandbox: RunningSandbox) -> None:
    token = sandbox.authorize(api, "LinkedIn", "profile")
    api.get(f"/v2/social-authorization/{token}")
    sandbox.set_faults(latency_ms=5, error_rate=0.5)
    assert sandbox.connections()
    assert sandbox.stats()["v2_calls"] > 0

    sandbox.reset()

    assert sandbox.connections() == []
    assert sandbox.stats()["v2_calls"] == 0
    assert sandbox.faults()["error_rate"] == 0
    expired = api.get(f"/v2/social-authorization/{token}")
    assert expired.status_code == 404
    assert expired.json() == {
        "Result": False,
        "Errors": {"API": {"Error": "Token is invalid or has expired"}},
    }
