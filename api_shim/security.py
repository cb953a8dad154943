"""Who may call the shim (Bearer keys), and where it may send a browser back to (return URLs)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from api_shim.errors import ApiError
from worker.config.settings import is_loopback, origin_of
from worker.config.tenants import Tenants


def tenant_of_bearer(header: str | None, tenants: Tenants) -> str:
    """The name of the tenant whose caller key the Bearer header presents; 401 unless one matches. Keys
    are found by their SHA-256 (worker.config.tenants.Tenants.of_key), so the lookup's time depends on the
    digest, which a caller cannot steer towards a key, not on how much of a key was guessed."""
    scheme, _, presented = (header or "").partition(" ")
    tenant = tenants.of_key(presented.strip())
    if scheme.lower() != "bearer" or not presented or tenant is None:
        raise ApiError(401, "unauthorized", "a valid Bearer key is required", {"WWW-Authenticate": "Bearer"})
    return tenant.name


def check_return_url(url: str, allowed: list[str]) -> str:
    """The URL when its scheme, host and port equal one allowed origin exactly; 422 otherwise."""
    if len(url) > 2048 or any(ch in url for ch in "\r\n\t\\ ") or not url.isprintable():
        raise ApiError(422, "return_url_not_allowed", "return_url is not a plain URL")
    try:
        origin = origin_of(url)
    except ValueError as error:
        raise ApiError(422, "return_url_not_allowed", f"return_url: {error}") from None
    if urlsplit(url).fragment:
        raise ApiError(422, "return_url_not_allowed", "return_url must not carry a fragment")
    scheme, host, _ = origin
    if scheme != "https" and not is_loopback(host):
        raise ApiError(422, "return_url_not_allowed", "return_url must use https (http only on loopback)")
    if origin not in {origin_of(item) for item in allowed}:
        raise ApiError(
            422, "return_url_not_allowed", "return_url is not among the tenant's allowed return URLs"
        )
    return url


def return_url_with(return_url: str, flow_id: str, status: str, state: str | None = None) -> str:
    """The flow's return_url with `flow_id`, `status` and the caller's `state` (when it gave one) added to
    its own query, in place of any it had of those names (a receiver reading the first of a name reads
    ours)."""
    parts = urlsplit(return_url)
    ours = [("flow_id", flow_id), ("status", status), *([("state", state)] if state is not None else [])]
    names = {name for name, _ in ours}
    given = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(name, value) for name, value in given if name not in names]
    return urlunsplit(parts._replace(query=urlencode([*kept, *ours])))
