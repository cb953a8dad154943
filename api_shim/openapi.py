"""What /openapi.json says: every status a route can answer, with the error body, and every content type.

A route declares its own refusals with `responses=errors(404, 409)`, and its answers that are not JSON
with `html_pages`, `see_other` and `server_sent_events`. `describe` adds to every operation what is
answered around the routes: the size limits (413, 414, 431), storage away (503), the Bearer key (401,
where the operation declares it), a body that is not JSON (400), and the error body in place of
FastAPI's own validation error (422 where there is a body; a route whose query parameters can be
invalid declares `errors(422)` itself)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field

Responses = dict[int | str, dict[str, Any]]
_REF = "#/components/schemas/{model}"

_MEANINGS = {
    303: "See Other: the browser is sent on to `Location`",
    400: "malformed input: a body that is not JSON, a query parameter of the wrong shape",
    401: "no valid Bearer key",
    403: "not this browser's flow",
    404: "no such resource, or another tenant's",
    409: "the resource is not in a state that allows this",
    410: "the flow or its authorization has expired",
    413: "the body is larger than the shim accepts",
    414: "the path or query string is longer than the shim accepts",
    422: "the body or a parameter is not valid",
    431: "the headers are larger than the shim accepts",
    502: "Oktopost refused or did not answer",
    503: "unavailable for now (storage, or Oktopost's budget); `Retry-After` says when to try again",
}

_HEADERS = {  # what every answer of that status carries
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    503: {
        "Retry-After": {
            "description": "whole seconds to wait before trying again",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
}

_SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "the event's seq: send it back as Last-Event-ID"},
        "event": {"type": "string", "description": "the event's type"},
        "data": {"type": "string", "contentMediaType": "application/json", "description": "the event"},
    },
    "required": ["id", "event", "data"],
}

BEARER = HTTPBearer(
    auto_error=False,  # the caller dependency answers 401 itself, with the shim's error body
    scheme_name="CallerKey",
    description="a caller key of SHIM_API_KEYS or of the tenants file",
)


class ErrorDetail(BaseModel):
    code: str = Field(examples=["flow_not_found"], description="stable, for programs")
    message: str = Field(description="for people")


class ErrorBody(BaseModel):
    """Every refusal of the API (HTML pages of /connect/... excepted) has this body."""

    error: ErrorDetail


def errors(*statuses: int, meanings: dict[int, str] | None = None) -> Responses:
    """`responses=` for a route's own refusals: each status with the error body, described by
    `meanings` where the usual words for the status would not say enough."""
    said = meanings or {}
    return {status: _error(status, said.get(status, _MEANINGS[status])) for status in statuses}


def html_pages(*statuses: int, meanings: dict[int, str] | None = None) -> Responses:
    """`responses=` for a browser route's answers that are HTML pages (`text/html`)."""
    said = meanings or {}
    return {
        status: {
            "description": said.get(status, _MEANINGS.get(status, "the page")),
            "content": {"text/html": {"schema": {"type": "string"}}},
        }
        for status in statuses
    }


def see_other(description: str) -> Responses:
    """`responses=` for a 303 whose `Location` says where the browser goes next."""
    location = {"description": "where to go next", "schema": {"type": "string", "format": "uri"}}
    return {303: {"description": description, "headers": {"Location": location}}}


def server_sent_events(description: str) -> Responses:
    """`responses=` for a 200 of server-sent events (`text/event-stream`), each a flow's event."""
    return {200: {"description": description, "content": {"text/event-stream": {"itemSchema": _SSE_EVENT}}}}


def describe(app: FastAPI) -> None:
    """Makes `app.openapi()` complete what the routes declare (see the module's docstring)."""

    build = app.openapi  # FastAPI's own, which keeps what it builds in app.openapi_schema

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _complete(build())
        return build()

    app.openapi = openapi  # type: ignore[method-assign]


def _complete(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    error_body = ErrorBody.model_json_schema(ref_template=_REF)
    components.update(error_body.pop("$defs"), ErrorBody=error_body)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            _complete_operation(operation)
    for fastapi_own in ("HTTPValidationError", "ValidationError"):
        components.pop(fastapi_own, None)


def _complete_operation(operation: dict[str, Any]) -> None:
    responses = operation["responses"]
    validation = responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if validation.get("$ref", "").endswith("/HTTPValidationError"):
        del responses["422"]  # FastAPI's own, even where only a path of any string could be invalid
        if "requestBody" in operation:
            _add(responses, 422)
    if "application/json" in operation.get("requestBody", {}).get("content", {}):
        _add(responses, 400, "the body is not JSON")
    if operation.get("security"):
        _add(responses, 401)
    for status in (413, 414, 431, 503):  # answered before or around any route (api_shim/limits.py)
        _add(responses, status)


def _add(responses: dict[str, Any], status: int, description: str | None = None) -> None:
    responses.setdefault(str(status), _error(status, description or _MEANINGS[status]))


def _error(status: int, description: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response
