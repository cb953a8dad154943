"""Each API call built once, ready for either client to send: what to send and how to read the answer."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from worker.observing.redaction import redact
from worker.oktopost.answers import Credential, CredentialPage, EntityChoice, VerifiedProfile
from worker.oktopost.reading import (
    parse_complete,
    parse_credential,
    parse_credential_page,
    parse_deletion,
    parse_start,
    parse_verify,
)
from worker.oktopost.vocabulary import (
    AUTHORIZATION_PATH,
    CREDENTIAL_PATH,
    canonical_entity_type,
    canonical_network,
)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, repr=False)
class OktopostCall(Generic[_T]):
    """One API call, ready to send by either client: what to send and how to read the answer."""

    step: str
    method: str
    path: str  # quoted, may hold the token: never log it unredacted
    parse: Callable[[httpx.Response], _T]
    # Already encoded: Oktopost expects `ids=1,2` with a bare comma, which httpx's params= would escape.
    query: str = ""
    form: Mapping[str, str] | None = field(default=None)

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def __repr__(self) -> str:
        return f"OktopostCall({self.step}: {self.method} {redact(self.path)})"


def _quoted_token(token: str) -> str:
    """The token as it was claimed: one spelling only (a token is checked whole where it enters, and
    never stripped or decoded afterwards, so Oktopost is asked about the token its flow holds)."""
    if not isinstance(token, str) or not token.strip():
        raise ValueError("an okt token is required")
    if token != token.strip():
        raise ValueError("an okt token has no surrounding whitespace")
    return quote(token, safe="")


def start_authorization_request(network: str, callback_url: str, type: str = "profile") -> OktopostCall[str]:
    """Step 1: POST /v2/social-authorization, form-encoded network, url and type."""
    parts = urlsplit(callback_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("the callback url must be an absolute http(s) URL")
    form = {"network": canonical_network(network), "url": callback_url, "type": canonical_entity_type(type)}
    return OktopostCall("start authorization", "POST", AUTHORIZATION_PATH, parse_start, form=form)


def verify_request(token: str) -> OktopostCall[VerifiedProfile | EntityChoice]:
    """Step 3: GET /v2/social-authorization/{token}."""
    return OktopostCall("verify", "GET", f"{AUTHORIZATION_PATH}/{_quoted_token(token)}", parse_verify)


def complete_request(token: str, ids: Sequence[str]) -> OktopostCall[list[Credential]]:
    """Step 4: PUT /v2/social-authorization/{token}?ids=a,b, ids comma-joined as the reference does."""
    if isinstance(ids, str):
        raise ValueError("ids must be a list of ids, not one string")
    cleaned = [str(entity_id).strip() for entity_id in ids]
    if not cleaned or any(not entity_id or "," in entity_id for entity_id in cleaned):
        raise ValueError("ids must be a non-empty list of non-empty ids without commas")
    query = "ids=" + ",".join(quote(entity_id, safe="") for entity_id in cleaned)
    return OktopostCall(
        "complete", "PUT", f"{AUTHORIZATION_PATH}/{_quoted_token(token)}", parse_complete, query=query
    )


PAGE_SIZES = (25, 50, 100)


def _credential_path(credential_id: str) -> str:
    if not isinstance(credential_id, str) or not credential_id.strip():
        raise ValueError("a credential id is required")
    return f"{CREDENTIAL_PATH}/{quote(credential_id.strip(), safe='')}"


def credential_request(credential_id: str) -> OktopostCall[Credential]:
    """GET /v2/credential/{id}."""
    return OktopostCall("get credential", "GET", _credential_path(credential_id), parse_credential)


def list_credentials_request(
    page: int = 0, count: int = 100, *, include_invalid: bool = True, network: str | None = None
) -> OktopostCall[CredentialPage]:
    """GET /v2/credential?includeInvalid=&_page=&_count=[&network=]: one page, `page` from 0."""
    if isinstance(page, bool) or not isinstance(page, int) or page < 0:
        raise ValueError("page must be a whole number from 0")
    if count not in PAGE_SIZES:
        raise ValueError(f"count must be one of {', '.join(map(str, PAGE_SIZES))}")
    query = f"includeInvalid={int(include_invalid)}&_page={page}&_count={count}"
    if network is not None:
        query += f"&network={canonical_network(network)}"
    return OktopostCall("list credentials", "GET", CREDENTIAL_PATH, parse_credential_page, query=query)


def delete_credential_request(credential_id: str) -> OktopostCall[bool]:
    """DELETE /v2/credential/{id}: True when removed now, False when Oktopost had no such credential."""
    return OktopostCall("delete credential", "DELETE", _credential_path(credential_id), parse_deletion)
