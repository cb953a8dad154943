"""The Oktopost API the sandbox imitates: `/v2/social-authorization` (steps 1, 3 and 4) and `/v2/credential`.

Shapes follow the reference: `Result` always present; refusals are `{"Result": false, "Errors": {...}}`
keyed by kind (`API` for a refusal of the call, `Param` for a bad or missing parameter).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import string
from collections.abc import Callable
from urllib.parse import parse_qsl, quote, urlsplit

from sandbox.authorizations import (
    Account,
    Credential,
    NotSelectable,
    TokenInvalid,
    UnknownEntity,
)
from sandbox.catalog import ENTITY_TYPES, NETWORKS, Entity, canonical_entity_type, canonical_network
from sandbox.httpserver import Request, Response, json_response

MAX_URL_LENGTH = 2048
MAX_FORM_FIELDS = 100
_PRINTABLE_ASCII = "".join(ch for ch in string.printable if not ch.isspace())
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")


def api_error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return json_response(status, {"Result": False, "Errors": {"API": {"Error": message}}}, headers)


def param_error(errors: dict[str, str]) -> Response:
    return json_response(400, {"Result": False, "Errors": {"Param": errors}})


def unauthorized() -> Response:
    return api_error(401, "Invalid API credentials", [("www-authenticate", 'Basic realm="Oktopost"')])


def method_not_allowed(allowed: str) -> Response:
    return api_error(405, "Method not allowed", [("allow", allowed)])


def parse_form(text: str) -> dict[str, str]:
    """A query string or form body; the first value of a repeated name wins."""
    form: dict[str, str] = {}
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="replace", max_num_fields=MAX_FORM_FIELDS)
    except ValueError:  # too many fields
        return form
    for name, value in pairs:
        form.setdefault(name, value)
    return form


class BasicAuth:
    """The one account id / API key pair the sandbox accepts."""

    def __init__(self, account_id: str, api_key: str) -> None:
        self._expected = f"{account_id}:{api_key}".encode()

    def accepts(self, request: Request) -> bool:
        scheme, _, encoded = request.header("authorization").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            pair = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(pair, self._expected)


class OktopostApi:
    """Routes an authenticated, admitted `/v2/` request to its endpoint."""

    def __init__(self, account: Account, base_url: Callable[[Request], str]) -> None:
        self._account = account
        self._base_url = base_url

    def answer(self, request: Request) -> Response:
        parts = request.path.split("/")  # "/v2/social-authorization/TOKEN" -> ["", "v2", ...]
        resource = parts[2] if len(parts) > 2 else ""
        if resource == "social-authorization" and len(parts) == 3:
            if request.method != "POST":
                return method_not_allowed("POST")
            return self._request_authorization(request)
        if resource == "social-authorization" and len(parts) == 4 and parts[3]:
            if request.method == "GET":
                return self._verify(parts[3])
            if request.method == "PUT":
                return self._complete(parts[3], request)
            return method_not_allowed("GET, PUT")
        if resource == "credential" and len(parts) == 4 and parts[3]:
            if request.method != "GET":
                return method_not_allowed("GET")
            return self._read_credential(parts[3])
        return api_error(404, f"Unknown API route {request.path}")

    def _request_authorization(self, request: Request) -> Response:
        form = parse_form(request.body.decode("utf-8", errors="replace"))
        errors: dict[str, str] = {}
        for name in ("network", "url"):
            if not form.get(name, "").strip():
                errors[name] = f"Missing value for parameter {name}"
        network = canonical_network(form.get("network", "")) if "network" not in errors else None
        if "network" not in errors and network is None:
            errors["network"] = f"Invalid value for parameter network (one of {', '.join(NETWORKS)})"
        callback_url = form.get("url", "").strip()
        if "url" not in errors and not _is_callback_url(callback_url):
            errors["url"] = "Invalid value for parameter url (an absolute http or https URL)"
        entity_type = canonical_entity_type(form.get("type", "") or "profile")
        if entity_type is None:
            errors["type"] = f"Invalid value for parameter type (one of {', '.join(ENTITY_TYPES)})"
        if errors:
            return param_error(errors)
        assert network is not None
        assert entity_type is not None
        # Non-ASCII characters are percent-encoded so the URL can go into a Location header as it is.
        callback_url = quote(callback_url, safe=_PRINTABLE_ASCII)
        authorization = self._account.request_authorization(network, entity_type, callback_url)
        redirect_url = f"{self._base_url(request)}/oauth/authorize?request={authorization.id}"
        return json_response(200, {"Result": True, "RedirectUrl": redirect_url})

    def _verify(self, token: str) -> Response:
        try:
            verification = self._account.verify(token)
        except TokenInvalid:
            return _token_invalid()
        if verification.profile is not None:
            return json_response(200, {"Result": True, "Credential": _credential_json(verification.profile)})
        entities = [_entity_json(entity) for entity in verification.entities]
        return json_response(200, {"Result": True, "token": verification.token, "data": entities})

    def _complete(self, token: str, request: Request) -> Response:
        raw_ids = parse_form(request.query).get("ids")
        if raw_ids is None:
            raw_ids = parse_form(request.body.decode("utf-8", errors="replace")).get("ids", "")
        ids = list(dict.fromkeys(item.strip() for item in raw_ids.split(",") if item.strip()))
        if not ids:
            return param_error({"ids": "Missing value for parameter ids"})
        try:
            credentials = self._account.complete(token, ids)
        except TokenInvalid:
            return _token_invalid()
        except NotSelectable:
            return api_error(400, "This token is for a profile; there are no pages or groups to select")
        except UnknownEntity as exc:
            return api_error(400, f"Unknown id: {exc.entity_id}")
        listed = [
            {"Id": c.id, "Name": c.entity.name, "Status": "valid", "Network": c.entity.network}
            for c in credentials
        ]
        return json_response(200, {"Result": True, "Credentials": listed})

    def _read_credential(self, credential_id: str) -> Response:
        credential = self._account.credential(credential_id)
        if credential is None:
            return api_error(404, "Credential not found")
        return json_response(200, {"Result": True, "Credential": _credential_json(credential)})


def public_base_url(request: Request, fallback: str) -> str:
    """`http://` plus the Host the request came in on, so links work from other hosts; else `fallback`."""
    host = request.header("host").strip()
    return f"http://{host}" if _HOST.match(host) else fallback


def _is_callback_url(url: str) -> bool:
    if len(url) > MAX_URL_LENGTH or any(ch.isspace() or ord(ch) < 32 for ch in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _token_invalid() -> Response:
    return api_error(404, "Token is invalid or has expired")


def _credential_json(credential: Credential) -> dict[str, object]:
    entity = credential.entity
    return {
        "Id": credential.id,
        "Created": credential.created,
        "Name": entity.name,
        "Status": "valid",
        "Network": entity.network,
        "ImageLink": entity.image_link,
        "NetworkUsername": entity.network_username,
    }


def _entity_json(entity: Entity) -> dict[str, object]:
    return {
        "Id": entity.id,
        "Name": entity.name,
        "Network": entity.network,
        "ImageLink": entity.image_link,
        "NetworkUsername": entity.network_username,
        "IsConnected": entity.is_connected,
    }
