"""The Oktopost API the sandbox imitates: `/v2/social-authorization` (steps 1, 3 and 4) and `/v2/credential`
(list, read one, delete one, over the credentials the account has connected).

Shapes follow the reference: `Result` always present; a refusal is answered as a `Refusal`, which the
sandbox shapes as the `error_shape` fault says. Parameters are taken as strictly as Oktopost takes them:
network names and entity types spelled exactly as the reference spells them, the PUT's `ids` only from
the query string.
"""

from __future__ import annotations

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
from sandbox.catalog import ENTITY_TYPES, NETWORKS, Entity
from sandbox.httpserver import Request, Response, json_response
from sandbox.refusals import Refusal, param_refusal

MAX_URL_LENGTH = 2048
MAX_FORM_FIELDS = 100
_PRINTABLE_ASCII = "".join(ch for ch in string.printable if not ch.isspace())
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")

TOKEN_INVALID = Refusal(404, "Token is invalid or has expired")
CREDENTIAL_NOT_FOUND = Refusal(404, "Credential not found")
PAGE_SIZES = ("25", "50", "100")
UNAUTHORIZED = Refusal(
    401, "Invalid API credentials", headers=(("www-authenticate", 'Basic realm="Oktopost"'),)
)


def method_not_allowed(allowed: str) -> Refusal:
    return Refusal(405, "Method not allowed", headers=(("allow", allowed),))


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


class OktopostApi:
    """Routes an authenticated, admitted `/v2/` request to its endpoint."""

    def __init__(self, base_url: Callable[[Request], str]) -> None:
        self._base_url = base_url

    def answer(self, request: Request, account: Account) -> Response | Refusal:
        parts = request.path.split("/")  # "/v2/social-authorization/TOKEN" -> ["", "v2", ...]
        resource = parts[2] if len(parts) > 2 else ""
        if resource == "social-authorization" and len(parts) == 3:
            if request.method != "POST":
                return method_not_allowed("POST")
            return self._request_authorization(request, account)
        if resource == "social-authorization" and len(parts) == 4 and parts[3]:
            if request.method == "GET":
                return _verify(parts[3], account)
            if request.method == "PUT":
                return _complete(parts[3], request, account)
            return method_not_allowed("GET, PUT")
        if resource == "credential" and len(parts) == 3:
            if request.method != "GET":
                return method_not_allowed("GET")
            return _list_credentials(request, account)
        if resource == "credential" and len(parts) == 4 and parts[3]:
            if request.method == "GET":
                return _read_credential(parts[3], account)
            if request.method == "DELETE":
                return _delete_credential(parts[3], account)
            return method_not_allowed("GET, DELETE")
        return Refusal(404, f"Unknown API route {request.path}")

    def _request_authorization(self, request: Request, account: Account) -> Response | Refusal:
        form = parse_form(request.body.decode("utf-8", errors="replace"))
        errors: dict[str, str] = {}
        for name in ("network", "url"):
            if not form.get(name, "").strip():
                errors[name] = f"Missing value for parameter {name}"
        network = form.get("network", "")
        if "network" not in errors and network not in NETWORKS:
            errors["network"] = f"Invalid value for parameter network (one of {', '.join(NETWORKS)})"
        callback_url = form.get("url", "").strip()
        if "url" not in errors and not _is_callback_url(callback_url):
            errors["url"] = "Invalid value for parameter url (an absolute http or https URL)"
        entity_type = form.get("type", "") or "profile"
        if entity_type not in ENTITY_TYPES:
            errors["type"] = f"Invalid value for parameter type (one of {', '.join(ENTITY_TYPES)})"
        if errors:
            return param_refusal(errors)
        # Non-ASCII characters are percent-encoded so the URL can go into a Location header as it is.
        callback_url = quote(callback_url, safe=_PRINTABLE_ASCII)
        authorization = account.request_authorization(network, entity_type, callback_url)
        redirect_url = f"{self._base_url(request)}/oauth/authorize?request={authorization.id}"
        return json_response(200, {"Result": True, "RedirectUrl": redirect_url})


def _verify(token: str, account: Account) -> Response | Refusal:
    try:
        verification = account.verify(token)
    except TokenInvalid:
        return TOKEN_INVALID
    if verification.profile is not None:
        return json_response(200, {"Result": True, "Credential": _credential_json(verification.profile)})
    entities = [_entity_json(entity) for entity in verification.entities]
    return json_response(200, {"Result": True, "token": verification.token, "data": entities})


def _complete(token: str, request: Request, account: Account) -> Response | Refusal:
    # As the reference sends them: in the query string. A form body's ids are not read, as Oktopost's are not.
    raw_ids = parse_form(request.query).get("ids", "")
    ids = list(dict.fromkeys(item.strip() for item in raw_ids.split(",") if item.strip()))
    if not ids:
        return param_refusal({"ids": "Missing value for parameter ids"})
    try:
        credentials = account.complete(token, ids)
    except TokenInvalid:
        return TOKEN_INVALID
    except NotSelectable:
        return Refusal(400, "This token is for a profile; there are no pages or groups to select")
    except UnknownEntity as exc:
        return Refusal(400, f"Unknown id: {exc.entity_id}")
    listed = [
        {
            "Id": c.id,
            "Name": c.entity.name,
            "DisplayName": c.entity.display_name,
            "Status": c.status,
            "Network": c.entity.network,
        }
        for c in credentials
    ]
    return json_response(200, {"Result": True, "Credentials": listed})


def _read_credential(credential_id: str, account: Account) -> Response | Refusal:
    credential = account.credential(credential_id)
    if credential is None:
        return CREDENTIAL_NOT_FOUND
    return json_response(200, {"Result": True, "Credential": _credential_json(credential)})


def _delete_credential(credential_id: str, account: Account) -> Response | Refusal:
    if not account.remove(credential_id):
        return CREDENTIAL_NOT_FOUND
    return json_response(200, {"Result": True})


def _list_credentials(request: Request, account: Account) -> Response | Refusal:
    """`?network=&includeInvalid=0|1&_page=N&_count=25|50|100`: one page, in connection order."""
    form = parse_form(request.query)
    errors: dict[str, str] = {}
    network = form.get("network", "")
    if network and network not in NETWORKS:
        errors["network"] = f"Invalid value for parameter network (one of {', '.join(NETWORKS)})"
    include_invalid = form.get("includeInvalid", "0")
    if include_invalid not in ("0", "1"):
        errors["includeInvalid"] = "Invalid value for parameter includeInvalid (0 or 1)"
    page = form.get("_page", "0")
    if not (page.isascii() and page.isdigit() and len(page) <= 9):
        errors["_page"] = "Invalid value for parameter _page (a whole number from 0)"
    count = form.get("_count", "25")
    if count not in PAGE_SIZES:
        errors["_count"] = f"Invalid value for parameter _count (one of {', '.join(PAGE_SIZES)})"
    if errors:
        return param_refusal(errors)
    matching = [
        credential
        for credential in account.connections()
        if (not network or credential.entity.network == network)
        and (include_invalid == "1" or credential.status == "valid")
    ]
    start = int(page) * int(count)
    items = [_credential_json(credential) for credential in matching[start : start + int(count)]]
    return json_response(200, {"Result": True, "Items": items, "Total": len(matching)})


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


def _credential_json(credential: Credential) -> dict[str, object]:
    entity = credential.entity
    return {
        "Id": credential.id,
        "Created": credential.created,
        "Name": entity.name,
        "DisplayName": entity.display_name,
        "Status": credential.status,
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
