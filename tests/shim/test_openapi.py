"""What /openapi.json says, read as a partner generating a client reads it, and what the routes answer
where the description and the answers met least (test_openapi_truth.py checks the rest against a shim
process)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.shim import CALLER, Shim

pytestmark = pytest.mark.anyio

ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}


async def _description(shim: Shim) -> dict[str, Any]:
    answer = await shim.http.get("/openapi.json")
    assert answer.status_code == 200
    description: dict[str, Any] = answer.json()
    return description


def _operations(description: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, operations in description["paths"].items()
        for method, operation in operations.items()
    ]


BROWSER_ROUTES = ("/connect/", "/v1/callback/", "/v1/start/")  # the user's browser, not the caller


async def test_every_refusal_is_described_with_the_error_body_or_as_a_page(shim: Shim) -> None:
    description = await _description(shim)
    error_body = description["components"]["schemas"]["ErrorBody"]
    assert error_body["required"] == ["error"]
    assert description["components"]["schemas"]["ErrorDetail"]["required"] == ["code", "message"]
    assert "HTTPValidationError" not in description["components"]["schemas"]
    for method, path, operation in _operations(description):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            content = response["content"]
            if path.startswith(BROWSER_ROUTES) and "text/html" in content:
                continue  # the hosted pages and the start route refuse with a page, for the browser
            assert content == {"application/json": {"schema": ERROR_BODY}}, (method, path, status)
            if status == "503":
                assert "Retry-After" in response["headers"], (method, path)
        for status in ("413", "414", "431", "503"):  # the size limits and storage, before any route
            assert status in operation["responses"], (method, path, status)


async def test_the_caller_routes_declare_the_bearer_key_and_its_401(shim: Shim) -> None:
    description = await _description(shim)
    schemes = description["components"]["securitySchemes"]
    assert schemes == {
        "CallerKey": {"type": "http", "scheme": "bearer", "description": schemes["CallerKey"]["description"]}
    }
    for method, path, operation in _operations(description):
        if path.startswith("/v1/") and not path.startswith(BROWSER_ROUTES):
            assert operation["security"] == [{"CallerKey": []}], (method, path)
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], (method, path)
            names = [parameter["name"].lower() for parameter in operation.get("parameters", [])]
            assert "authorization" not in names, (method, path)
        else:
            assert "security" not in operation, (method, path)


async def test_every_json_body_may_be_refused_as_not_json_or_invalid(shim: Shim) -> None:
    description = await _description(shim)
    with_body = [
        (method, path, operation)
        for method, path, operation in _operations(description)
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]
    assert len(with_body) >= 4
    for method, path, operation in with_body:
        assert {"400", "422"} <= set(operation["responses"]), (method, path)


async def test_the_statuses_the_routes_answer_are_declared(shim: Shim) -> None:
    paths = (await _description(shim))["paths"]
    declared = {
        "/v1/authorizations/{flow_id}/selection": ("post", {"202", "404", "409", "410", "422"}),
        "/v1/webhooks/{endpoint_id}/replay": ("post", {"202", "404", "422"}),
        "/v1/webhooks/{endpoint_id}": ("delete", {"204", "404"}),
        "/v1/webhooks/{endpoint_id}/deliveries": ("get", {"200", "404"}),
        "/v1/authorizations": ("post", {"201", "422", "502", "503"}),
        "/v1/callback/{flow_id}": ("get", {"200", "303", "400", "404", "409", "410"}),
    }
    for path, (method, statuses) in declared.items():
        assert statuses <= set(paths[path][method]["responses"]), path
    assert "422" not in paths["/v1/authorizations/{flow_id}"]["get"]["responses"]  # a path is never invalid


async def test_pages_streams_and_redirects_are_described_by_their_content_type(shim: Shim) -> None:
    paths = (await _description(shim))["paths"]
    callback = paths["/v1/callback/{flow_id}"]["get"]["responses"]
    assert list(callback["200"]["content"]) == ["text/html"]
    assert callback["303"]["headers"]["Location"]["schema"]["format"] == "uri"
    assert "content" not in callback["303"]
    for path in ("/v1/authorizations/{flow_id}/events", "/connect/{flow_id}/events"):
        assert list(paths[path]["get"]["responses"]["200"]["content"]) == ["text/event-stream"], path
    page = paths["/connect/{flow_id}"]["get"]["responses"]
    assert {status: list(page[status]["content"]) for status in ("200", "403", "404")} == {
        "200": ["text/html"],
        "403": ["text/html"],
        "404": ["text/html"],
    }
    selection = paths["/connect/{flow_id}/selection"]["post"]
    assert list(selection["requestBody"]["content"]) == ["application/x-www-form-urlencoded"]
    assert "200" not in selection["responses"]
    assert "Location" in selection["responses"]["303"]["headers"]


async def test_values_with_a_vocabulary_or_a_format_say_so(shim: Shim) -> None:
    schemas = (await _description(shim))["components"]["schemas"]
    request = schemas["AuthorizationRequest"]["properties"]
    assert request["network"]["enum"] == ["Twitter", "Facebook", "LinkedIn", "YouTube", "Instagram"]
    assert request["type"]["enum"] == ["profile", "page", "group"]
    urls = [choice for choice in request["return_url"]["anyOf"] if "format" in choice]
    assert [(url["format"], url["pattern"]) for url in urls] == [("uri", "^[hH][tT][tT][pP][sS]?://")]
    assert schemas["WebhookRequest"]["properties"]["url"]["format"] == "uri"
    created = schemas["AuthorizationCreated"]["properties"]
    assert created["expires_at"]["format"] == "date-time"
    assert created["redirect_url"]["format"] == created["status_url"]["format"] == "uri"
    status = schemas["FlowStatus"]["properties"]
    assert "awaiting_selection" in status["status"]["enum"]
    assert status["network"]["enum"] == request["network"]["enum"]
    assert schemas["Webhook"]["properties"]["created_at"]["format"] == "date-time"
    assert schemas["ReplayRequest"]["properties"]["since"]["format"] == "date-time"
    assert schemas["Connection"]["properties"]["network"]["enum"] == request["network"]["enum"]
    listing = (await _description(shim))["paths"]["/v1/connections"]["get"]["parameters"]
    [network] = [parameter for parameter in listing if parameter["name"] == "network"]
    assert [choice.get("enum") for choice in network["schema"]["anyOf"]] == [request["network"]["enum"], None]
    filters = {
        schema: schemas[schema]["properties"]["events"]
        for schema in ("WebhookRequest", "WebhookChange", "Webhook", "WebhookCreated")
    }
    for schema, events in filters.items():
        items = events["anyOf"][0]["items"] if "anyOf" in events else events["items"]
        assert "connection.*" in items["enum"], schema
        assert "connection.completed" in items["enum"], schema
        assert "foo.bar" not in items["enum"], schema


async def test_a_method_a_path_does_not_serve_is_refused_with_every_method_it_does(shim: Shim) -> None:
    for method in ("OPTIONS", "PUT", "TRACE"):
        answer = await shim.http.request(method, "/v1/webhooks", headers=CALLER)
        assert answer.status_code == 405
        assert answer.headers["allow"] == "GET, POST"
        assert answer.json()["error"]["code"] == "method_not_allowed"
    answer = await shim.http.request("PATCH", "/v1/callback/0123", headers=CALLER)
    assert (answer.status_code, answer.headers["allow"]) == (405, "GET")


async def test_a_body_that_is_not_json_is_a_400_on_every_json_route(shim: Shim) -> None:
    description = await _description(shim)
    flow = shim.flow_awaiting_selection()
    for method, path, operation in _operations(description):
        if "application/json" not in operation.get("requestBody", {}).get("content", {}):
            continue
        url = path.replace("{flow_id}", flow.flow_id).replace("{endpoint_id}", "0")
        headers = {**CALLER, "content-type": "application/json"}
        for body in (b"\xff{not json", b"{not json", b"nope", b'{"ids": [1,'):
            answer = await shim.http.request(method, url, content=body, headers=headers)
            assert answer.status_code == 400, (method, path, body, answer.text)
            assert answer.json()["error"]["code"] == "bad_request"


async def test_a_replay_since_a_number_is_refused_as_the_description_says(shim: Shim) -> None:
    created = await shim.http.post(
        "/v1/webhooks", json={"url": "https://93.184.215.14/hooks"}, headers=CALLER
    )
    assert created.status_code == 201, created.text
    url = f"/v1/webhooks/{created.json()['id']}/replay"
    for since in (0, 1764000000.5, "0"):
        answer = await shim.http.post(url, json={"since": since}, headers=CALLER)
        assert answer.status_code == 422, since
        assert answer.json()["error"]["code"] == "invalid_request"
    accepted = await shim.http.post(url, json={"since": "2026-11-28T14:00:00Z"}, headers=CALLER)
    assert accepted.status_code == 202
