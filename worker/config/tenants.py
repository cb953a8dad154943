"""Tenants: whose caller keys may start flows, where their users may be sent back, and which Oktopost
account (credentials, base URL, rate and daily limits) their flows use.

They come from TENANTS_FILE (TOML), beside the tenant `default` that SHIM_API_KEYS, OKTOPOST_* and
ALLOWED_RETURN_URLS make. Oktopost API keys live here, in process memory, as SecretStr: flows record their
tenant's name and account id, never a key. worker.config.settings builds a `Tenants` and turns every
error here into one line naming the tenant and the field.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator

from worker.config.brand import Brand
from worker.events import DEFAULT_TENANT

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_TENANT",
    "OktopostAccount",
    "Tenant",
    "Tenants",
    "TenantsError",
    "gather",
    "read_tenants_file",
]

# tenant names and account ids become parts of Redis names (channels, budget keys): a safe shape only
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")
MIN_KEY_LENGTH = 24
# .env.example and tenants.example.toml ship these so that every secret must be replaced
PLACEHOLDER_PREFIX = "change-me"
US_BASE_URL = "https://api.oktopost.com"
DEFAULT_ACCOUNT_ID = "demo-account"  # the sandbox's, and OKTOPOST_ACCOUNT_ID's default
DEFAULT_RATE_LIMIT = "60/minute"  # Oktopost's burst limit per account
DEFAULT_DAILY_LIMIT = 20000  # Oktopost's calls a day per account

_RATE = re.compile(r"^\s*(\d+)\s*(?:/|\s+per\s+)\s*(\d+)?\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE)
_PERIOD_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class TenantsError(ValueError):
    """The tenants file cannot be used; the message fits on one line and names the tenant and field."""


def parse_rate(text: str) -> tuple[int, int]:
    """`"60/minute"` -> (60, 60): calls allowed per window of that many seconds."""
    match = _RATE.match(text)
    if not match or int(match.group(1)) < 1:
        raise ValueError("expected a rate such as 60/minute, 10/second or 100/10 seconds")
    multiplier = int(match.group(2) or 1)
    if multiplier < 1:
        raise ValueError("the window must be at least 1")
    return int(match.group(1)), multiplier * _PERIOD_SECONDS[match.group(3).lower()]


def is_loopback(host: str) -> bool:
    """A loopback address, or `localhost` or a name under `.localhost`, which RFC 6761 reserves for
    loopback (resolvers and browsers answer them with 127.0.0.1 or ::1, never over the network)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def origin_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the scheme's default port filled in; ValueError when not http(s)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("user information is not allowed in a URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname.lower(), port


def oktopost_api_root(url: str) -> str:
    """Oktopost's docs write the base URL with /v2 (https://api.oktopost.com/v2); our paths carry it."""
    origin_of(url)
    parts = urlsplit(url.rstrip("/"))
    path = parts.path.rstrip("/")
    if path.lower() == "/v2":
        path = ""
    if path or parts.query or parts.fragment:
        raise ValueError("expected Oktopost's base URL, such as https://api.oktopost.com (or .../v2)")
    return parts._replace(path="").geturl()


def check_origins(urls: list[str]) -> list[str]:
    """Return-URL allowlists: each entry an http(s) URL without user information; what it allows is its
    origin (a path in it is no narrower limit)."""
    for url in urls:
        origin_of(url)
    return urls


_HOST = re.compile(r"[A-Za-z0-9._-]+|\[?[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?\]?")


def check_hosts(hosts: list[str]) -> list[str]:
    """Host allowlists: each entry a host name or an address, nothing more (no scheme, port or path)."""
    for host in hosts:
        if not _HOST.fullmatch(host):
            raise ValueError(f"expected host names or addresses, not {host!r}")
    return hosts


def check_account_id(value: str) -> str:
    """An Oktopost account id as it may be part of Redis names (`{prefix}:account:{id}:...`)."""
    if not ACCOUNT_ID.fullmatch(value):
        raise ValueError("expected letters, digits and . _ @ - (at most 128)")
    return value


def check_api_key(value: SecretStr) -> SecretStr:
    """An Oktopost API key that is there (not empty or blank)."""
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


def check_caller_keys(keys: list[SecretStr]) -> list[SecretStr]:
    """Caller keys long enough to resist guessing, and none of them a placeholder shipped with the docs."""
    for key in keys:
        secret = key.get_secret_value()
        if len(secret) < MIN_KEY_LENGTH:
            raise ValueError(f"a caller key must be at least {MIN_KEY_LENGTH} characters long")
        if secret.startswith(PLACEHOLDER_PREFIX):
            raise ValueError("a caller key is still a shipped placeholder: set a random one")
    return keys


def cleartext_refused(url: str, allow_http_hosts: list[str]) -> bool:
    """Basic credentials travel to an Oktopost base URL: http only to loopback or a listed host."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "http" and not is_loopback(host) and host not in allow_http_hosts


class OktopostAccount(BaseModel):
    """One Oktopost account: its Basic-auth pair, its region's base URL and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    account_id: str
    api_key: SecretStr
    base_url: str = US_BASE_URL
    rate_limit: str = DEFAULT_RATE_LIMIT
    daily_limit: int = Field(default=DEFAULT_DAILY_LIMIT, ge=1)

    @field_validator("account_id")
    @classmethod
    def _account_id_shape(cls, value: str) -> str:
        return check_account_id(value)

    @field_validator("api_key")
    @classmethod
    def _key_set(cls, value: SecretStr) -> SecretStr:
        secret = check_api_key(value).get_secret_value()
        if secret.startswith(PLACEHOLDER_PREFIX):
            raise ValueError("is still a shipped placeholder: set the account's API key")
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str, info: ValidationInfo) -> str:
        root = oktopost_api_root(value)
        allow_http_hosts: list[str] = (info.context or {}).get("allow_http_hosts", [])
        if cleartext_refused(root, allow_http_hosts):
            raise ValueError("must be https unless its host is loopback (or in ALLOW_HTTP_HOSTS)")
        return root

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value.strip()

    @property
    def rate(self) -> tuple[int, int]:
        return parse_rate(self.rate_limit)


class Tenant(BaseModel):
    """Whose caller keys these are, where their users may return to, and their Oktopost account."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    api_keys: list[SecretStr] = Field(min_length=1)
    allowed_return_urls: list[str] = Field(default_factory=list)
    oktopost: OktopostAccount
    # every callback from a browser that did not open the flow's start_url is confirmed by the user
    require_start: bool = False
    brand: Brand = Field(default_factory=Brand)  # what the hosted pages show of it (worker.config.brand)

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not TENANT_NAME.fullmatch(value):
            raise ValueError("a tenant name is letters, digits, _ and - (at most 64, no leading _ or -)")
        return value

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        return check_caller_keys(value)

    @field_validator("allowed_return_urls")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return check_origins(value)


class _TenantEntry(BaseModel):
    """A `[tenants.NAME]` table: a Tenant without its name, which is the table's."""

    model_config = ConfigDict(extra="forbid")

    api_keys: list[Any]
    allowed_return_urls: list[Any] = Field(default_factory=list)
    oktopost: dict[str, Any]
    require_start: Any = False
    brand: dict[str, Any] = Field(default_factory=dict)


class _TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: dict[str, _TenantEntry] = Field(min_length=1)


@dataclass(frozen=True)
class Tenants:
    """Every tenant of the deployment, by name; a caller key finds its tenant by the key's SHA-256, so
    the lookup costs the same with ten thousand tenants as with one, and its time tells nothing of how
    close a wrong key came to a right one (it depends on the digest only)."""

    by_name: dict[str, Tenant]
    _by_digest: dict[bytes, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for tenant in self.by_name.values():
            for key in tenant.api_keys:
                self._by_digest[_digest(key.get_secret_value())] = tenant.name

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self.by_name.values())

    def get(self, name: str) -> Tenant | None:
        return self.by_name.get(name)

    def of_key(self, presented: str) -> Tenant | None:
        """The tenant whose caller key this is, if any."""
        name = self._by_digest.get(_digest(presented))
        return self.by_name[name] if name is not None else None

    @property
    def accounts(self) -> dict[str, OktopostAccount]:
        """The Oktopost accounts the tenants use, by account id (tenants may share one)."""
        return {tenant.oktopost.account_id: tenant.oktopost for tenant in self}

    @property
    def has_keys(self) -> bool:
        return bool(self._by_digest)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_tenants_file(path: Path, allow_http_hosts: list[str]) -> list[Tenant]:
    """The tenants a TOML file names; TenantsError (one line, naming tenant and field) otherwise."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise TenantsError(f"cannot read {path}: {error.strerror or type(error).__name__}") from None
    except tomllib.TOMLDecodeError as error:
        raise TenantsError(f"{path} is not valid TOML: {' '.join(str(error).split())}") from None
    except UnicodeDecodeError as error:  # TOML is UTF-8; the bytes themselves may be a key: not shown
        raise TenantsError(f"{path} is not UTF-8 text (byte {error.start})") from None
    try:
        parsed = _TenantsFile.model_validate(document)
    except ValidationError as error:
        raise TenantsError(_describe(error)) from None
    tenants = []
    for name, entry in parsed.tenants.items():
        logo = entry.brand.get("logo")
        if isinstance(logo, str):  # a logo's path is relative to the file that names it
            entry.brand["logo"] = path.parent / logo
        try:
            tenants.append(
                Tenant.model_validate(
                    {"name": name, **entry.model_dump()}, context={"allow_http_hosts": allow_http_hosts}
                )
            )
        except ValidationError as error:
            raise TenantsError(f"tenant {_shown(name)}: {_describe(error)}") from None
    return tenants


def gather(tenants: list[Tenant]) -> Tenants:
    """The tenants, once each caller key belongs to one tenant only and the tenants on one Oktopost
    account describe it alike (one account has one key, one region and one budget)."""
    owners: dict[str, str] = {}
    accounts: dict[str, Tenant] = {}
    by_name: dict[str, Tenant] = {}
    for tenant in tenants:
        if tenant.name in by_name:
            raise TenantsError(
                f"tenant {tenant.name}: is named twice (SHIM_API_KEYS make the tenant default)"
            )
        by_name[tenant.name] = tenant
        for key in {key.get_secret_value() for key in tenant.api_keys}:
            if key in owners:
                raise TenantsError(f"tenant {tenant.name}: api_keys: a key is also tenant {owners[key]}'s")
            owners[key] = tenant.name
        account = tenant.oktopost
        first = accounts.setdefault(account.account_id, tenant)
        differing = [name for name, same in _alike(first.oktopost, account).items() if not same]
        if differing:
            raise TenantsError(
                f"tenant {tenant.name}: oktopost.{differing[0]}: account {account.account_id} is described"
                f" otherwise by tenant {first.name}"
            )
    return Tenants(by_name)


def _alike(one: OktopostAccount, other: OktopostAccount) -> dict[str, bool]:
    """Whether two descriptions of one account agree, field by field (rates by their meaning:
    `60/minute` is `60 per minute`)."""
    return {
        "api_key": one.api_key.get_secret_value() == other.api_key.get_secret_value(),
        "base_url": one.base_url == other.base_url,
        "rate_limit": one.rate == other.rate,
        "daily_limit": one.daily_limit == other.daily_limit,
    }


def _describe(error: ValidationError) -> str:
    """`oktopost.api_key: field required`, or `tenant acme: ...` from the file's own structure."""
    first = error.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    location = [str(part) for part in first["loc"]]
    if location[:1] == ["tenants"] and len(location) >= 2:
        rest = ".".join(location[2:])
        return f"tenant {_shown(location[1])}: {rest + ': ' if rest else ''}{message}"
    return f"{'.'.join(location) + ': ' if location else ''}{message}"


def _shown(name: str) -> str:
    """A tenant's name as an error line shows it: safe shapes as they are, anything else quoted."""
    return name if TENANT_NAME.fullmatch(name) else repr(name)[:70]
