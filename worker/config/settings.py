"""Settings of the shim and the worker, read from the environment and the working directory's `.env`
(docs/api.md lists them).

A bad value stops start-up with one line naming the setting: `load_settings()` raises `ConfigError`,
and the command line turns it into that line and exit code 2.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from kombu.transport import TRANSPORT_ALIASES
from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.connection import parse_url

from worker.config.brand import Brand, check_color, check_support_url, read_logo
from worker.config.envfile import EnvFileError, read_env_file
from worker.config.tenants import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_TENANT,
    PLACEHOLDER_PREFIX,
    US_BASE_URL,
    OktopostAccount,
    Tenant,
    Tenants,
    TenantsError,
    check_account_id,
    check_api_key,
    check_caller_keys,
    check_hosts,
    check_origins,
    cleartext_refused,
    gather,
    is_loopback,
    oktopost_api_root,
    origin_of,
    parse_rate,
    read_tenants_file,
)

__all__ = [
    "EU_BASE_URL",
    "US_BASE_URL",
    "ConfigError",
    "Settings",
    "get_settings",
    "is_loopback",
    "load_settings",
    "origin_of",
    "parse_rate",
]

EU_BASE_URL = "https://eu-api.oktopost.com"


class ConfigError(Exception):
    """A setting is missing or invalid; the message names it and fits on one line."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
# what traces need (the otel extra): the SDK, both exporters, the two instrumentations
OTEL_MODULES = (
    "opentelemetry.sdk",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.exporter.otlp.proto.grpc",
    "opentelemetry.instrumentation.fastapi",
    "opentelemetry.instrumentation.celery",
)
DEFAULT_RETRY_SCHEDULE = (5.0, 60.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


def parse_schedule(text: str) -> tuple[float, ...]:
    """`"5s,1m,2h"` -> (5.0, 60.0, 7200.0): the waits before each retry (a bare number is seconds)."""
    waits = []
    for item in text.split(","):
        match = _DURATION.match(item)
        if not match:
            raise ValueError("expected waits such as 5s,1m,5m,30m,2h (units ms, s, m, h, d)")
        waits.append(float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()])
    if len(waits) > 20 or any(wait > 86400 for wait in waits):
        raise ValueError("at most 20 waits, each at most a day")
    return tuple(waits)


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    redis_url: str = "redis://localhost:6379/0"
    celery_broker_url: str | None = None
    # Redis through Sentinel: the sentinels (host:port, comma-separated) and the name of the master they
    # watch; REDIS_URL then gives only the password and database. The broker follows the same master
    # unless CELERY_BROKER_URL names another Redis.
    redis_sentinels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    redis_sentinel_master: str = Field(default="", max_length=128)
    redis_sentinel_password: SecretStr | None = None
    # acknowledged steps (a flow created, a callback claimed, a selection accepted, a flow ended) wait for
    # this many replicas to confirm them, at most REDIS_WAIT_TIMEOUT_MS; unconfirmed: the request is 503
    redis_wait_replicas: int = Field(default=0, ge=0, le=16)
    redis_wait_timeout_ms: int = Field(default=100, ge=1, le=60000)

    oktopost_account_id: str = DEFAULT_ACCOUNT_ID
    oktopost_api_key: SecretStr = SecretStr("demo-key")
    oktopost_base_url: str = US_BASE_URL
    oktopost_rate_limit: str = "60/minute"
    oktopost_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    oktopost_daily_limit: int = Field(default=20000, ge=1)
    oktopost_block_seconds: float = Field(default=900.0, gt=0, le=86400)

    public_base_url: str = "http://127.0.0.1:8000"
    # a connection that has not sent its whole request head this long after opening (or after its last
    # answer) is closed: slow clients cannot hold the shim's connections
    shim_header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # a request body must arrive whole this long after its head (408 otherwise): slow bodies cannot
    # hold the shim's places either
    shim_body_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # hosts besides loopback that may be reached over plain http (the dev sandbox in docker compose)
    allow_http_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_return_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    shim_api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # a TOML file of tenants, each with its caller keys, return URLs and Oktopost account (docs/tenants.md)
    tenants_file: Path | None = None
    # the Bearer token a Prometheus scrape of the shim's /metrics must present (unset: /metrics is open)
    metrics_token: SecretStr | None = Field(default=None)
    # the default tenant's require_start: a callback from a browser that did not open the flow's start_url
    # is always confirmed by the user (a tenants file sets it per tenant)
    require_start: bool = False
    # Flower's own setting (user:password, comma-separated), checked when Flower loads celeryconfig.py
    flower_basic_auth: SecretStr | None = None

    token_ttl_seconds: int = Field(default=300, gt=0, le=86400)
    flow_ttl_seconds: int = Field(default=900, gt=0, le=7 * 86400)
    flow_retention_seconds: int = Field(default=86400, gt=0, le=365 * 86400)
    # on SIGTERM a worker hands back every flow it holds at once; an attempt under way may end within
    # this, then the process exits (0) whatever it still runs
    worker_shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=3600)
    channel_prefix: str = Field(default="oktopost", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    # the brand the hosted pages (/connect/{flow_id}) show for the tenant `default`, and for every tenant
    # where its own brand says nothing: the name, the accent colour (#RRGGBB that white text is readable
    # on), a PNG or SVG logo of at most 64 KB, a https support link
    hosted_ui_app_name: str = Field(default="oktopost-connect", min_length=1, max_length=64)
    hosted_ui_color: str | None = None
    hosted_ui_logo: Path | None = None
    hosted_ui_support_url: str | None = None
    _brand: Brand = PrivateAttr()

    # server-sent event streams: at most this many open on one flow, and with one caller key; each ends
    # after SSE_MAX_SECONDS with a retry hint (the client reconnects with its Last-Event-ID)
    sse_max_per_flow: int = Field(default=5, ge=1, le=1000)
    sse_max_per_key: int = Field(default=50, ge=1, le=10000)
    sse_max_seconds: float = Field(default=3600.0, gt=0, le=86400)

    # webhooks: hosts (names or addresses) a webhook URL may reach although they are loopback, private or
    # link-local; how long one delivery attempt may take; the waits between attempts before `failed`
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # endpoints one tenant may register (each event is sent to each of them)
    webhook_max_endpoints: int = Field(default=20, ge=1, le=1000)
    # deliveries one tenant may have pending at once: past it, the tenant's further events wait in its
    # event index (none dropped) and become deliveries as its pending ones end; other tenants go on
    webhook_max_pending: int = Field(default=10000, ge=1, le=10_000_000)
    # events one replay request (POST /v1/webhooks/{id}/replay, or enable with replay_since) queues at
    # most; its answer's next_since says where the next one goes on
    webhook_replay_max_events: int = Field(default=5000, ge=1, le=1_000_000)
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = DEFAULT_RETRY_SCHEDULE
    # after a secret's rotation, how long deliveries carry the old secret's signature beside the new one
    webhook_secret_overlap_seconds: int = Field(default=86400, ge=0, le=30 * 86400)
    # an endpoint whose deliveries have all failed this long (no 2xx since its first failure) is disabled
    webhook_disable_after_seconds: int = Field(default=432000, gt=0, le=365 * 86400)
    # how long deliveries and their attempts are kept after they end (delivered or failed)
    webhook_retention_seconds: int = Field(default=604800, gt=0, le=365 * 86400)
    # connections' health: seconds between the checks of each account (0: none), and the most of each
    # account's rate and daily limits that checks may use
    connection_check_seconds: float = Field(default=900.0, ge=0, le=86400 * 7)
    connection_check_share: float = Field(default=0.1, gt=0, le=1)
    _tenants: Tenants = PrivateAttr()

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    # traces: OpenTelemetry's SDK reads its settings itself (worker.observing.tracing); the collector and
    # the protocol are checked here too, so that a wrong one stops start-up as any other setting does
    otel_exporter_otlp_endpoint: str = ""
    otel_exporter_otlp_traces_endpoint: str = ""  # the traces' own, in place of the one above
    otel_exporter_otlp_protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    otel_exporter_otlp_traces_protocol: Literal["http/protobuf", "grpc"] | None = None  # the traces' own

    @field_validator("otel_exporter_otlp_traces_protocol", "redis_sentinel_password", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint")
    @classmethod
    def _collector(cls, value: str) -> str:
        value = value.strip()
        if value and not _traces_installed():
            raise ValueError("traces need the otel extra: pip install 'oktopost-connect[otel]'")
        return check_collector_url(value) if value else value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _normalise_case(cls, value: object) -> object:
        if isinstance(value, str):
            return value.upper() if value.lower() in ("debug", "info", "warning", "error") else value.lower()
        return value

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _schedule(cls, value: object) -> object:
        return parse_schedule(value) if isinstance(value, str) else value

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _lower_hosts(cls, value: list[str]) -> list[str]:
        return [host.lower().strip("[]") for host in check_hosts(value)]

    @field_validator("allow_http_hosts")
    @classmethod
    def _http_hosts(cls, value: list[str]) -> list[str]:
        return check_hosts(value)

    @field_validator("oktopost_account_id")
    @classmethod
    def _account_id(cls, value: str) -> str:
        return check_account_id(value)  # as a tenants file's is checked

    @field_validator("oktopost_api_key")
    @classmethod
    def _api_key(cls, value: SecretStr) -> SecretStr:
        return check_api_key(value)  # as a tenants file's is checked

    @field_validator(
        "allowed_return_urls", "shim_api_keys", "allow_http_hosts", "webhook_allowed_hosts", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("allowed_return_urls")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return check_origins(value)

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _sentinel_list(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port, got {address!r}")
        return value

    @model_validator(mode="after")
    def _collector_as_its_protocol_takes_it(self) -> Settings:
        # grpc takes host:port; http/protobuf posts to a URL, and without its scheme every export fails
        protocol = self.otel_exporter_otlp_traces_protocol or self.otel_exporter_otlp_protocol
        for name in ("otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint"):
            value = getattr(self, name)
            if value and protocol == "http/protobuf" and "://" not in value:
                raise ValueError(
                    f"{name.upper()}: http/protobuf needs a URL with its scheme, such as"
                    " http://otel-collector:4318 (host:port alone is for OTEL_EXPORTER_OTLP_PROTOCOL=grpc)"
                )
        return self

    @model_validator(mode="after")
    def _sentinels_name_their_master(self) -> Settings:
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ValueError("REDIS_SENTINEL_MASTER: required with REDIS_SENTINELS")
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        return check_redis_url(value)

    @field_validator("celery_broker_url")
    @classmethod
    def _broker(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = value.partition("://")[0].lower() if "://" in value else ""
        if scheme in ("redis", "rediss", "unix"):
            return check_redis_url(value)
        if scheme not in TRANSPORT_ALIASES:
            raise ValueError("expected a broker URL such as redis://localhost:6379/0 or amqp://host:5672//")
        return value

    @field_validator("oktopost_base_url", "public_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        origin_of(value)
        return value.rstrip("/")

    @field_validator("oktopost_base_url")
    @classmethod
    def _oktopost_api_root(cls, value: str) -> str:
        return oktopost_api_root(value)

    @field_validator("shim_api_keys")
    @classmethod
    def _strong_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        return check_caller_keys(value)

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token_strong(cls, value: SecretStr | None) -> SecretStr | None:
        token = value.get_secret_value() if value is not None else None
        if token is not None and (len(token) < 16 or token.startswith(PLACEHOLDER_PREFIX)):
            raise ValueError("at least 16 characters, and not the placeholder of .env.example")
        if token is not None and not token.isprintable():
            raise ValueError("printable characters only")
        return value or None

    @field_validator("flower_basic_auth")
    @classmethod
    def _flower_password_set(cls, value: SecretStr | None) -> SecretStr | None:
        # anyone who passes Flower's Basic auth can shut the workers down
        pairs = value.get_secret_value().split(",") if value is not None else []
        for pair in pairs:
            password = pair.partition(":")[2]
            if not password or password.startswith(PLACEHOLDER_PREFIX):
                raise ValueError("a password is missing or still the placeholder of .env.example")
        return value

    @model_validator(mode="after")
    def _cleartext_only_on_loopback(self) -> Settings:
        # Basic credentials travel to OKTOPOST_BASE_URL and okt tokens come back to PUBLIC_BASE_URL
        for name in ("oktopost_base_url", "public_base_url"):
            if cleartext_refused(getattr(self, name), self.allow_http_hosts):
                raise ValueError(
                    f"{name.upper()}: must be https unless its host is loopback (or in ALLOW_HTTP_HOSTS)"
                )
        return self

    @field_validator("oktopost_rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value.strip()

    @model_validator(mode="after")
    def _broker_defaults_to_redis(self) -> Settings:
        if not self.celery_broker_url:
            self.celery_broker_url = self.redis_url
        return self

    @field_validator("hosted_ui_color", "hosted_ui_logo", "hosted_ui_support_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("hosted_ui_color")
    @classmethod
    def _readable_color(cls, value: str | None) -> str | None:
        return check_color(value) if value else None

    @field_validator("hosted_ui_support_url")
    @classmethod
    def _support_url(cls, value: str | None) -> str | None:
        return check_support_url(value) if value else None

    @model_validator(mode="after")
    def _read_brand(self) -> Settings:
        try:
            logo = read_logo(self.hosted_ui_logo) if self.hosted_ui_logo else None
        except ValueError as error:
            raise ValueError(f"HOSTED_UI_LOGO: {error}") from None
        self._brand = Brand.model_construct(
            name=self.hosted_ui_app_name,
            color=self.hosted_ui_color,
            logo=logo,
            support_url=self.hosted_ui_support_url,
        )
        return self

    @model_validator(mode="after")
    def _read_tenants(self) -> Settings:
        """The tenants: the file's, beside `default` from the environment (always without a file; with
        one, when SHIM_API_KEYS is set)."""
        tenants = [self._default_tenant()] if self.tenants_file is None or self.shim_api_keys else []
        try:
            if self.tenants_file is not None:
                tenants += read_tenants_file(self.tenants_file, self.allow_http_hosts)
            self._tenants = gather(tenants)
        except TenantsError as error:
            raise ValueError(f"TENANTS_FILE: {error}") from None
        return self

    def _default_tenant(self) -> Tenant:
        # built, not validated: each of these settings was checked above, and without a file the tenant
        # exists even with no caller key (the shim then refuses to start, `up` makes one)
        account = OktopostAccount.model_construct(
            account_id=self.oktopost_account_id,
            api_key=self.oktopost_api_key,
            base_url=self.oktopost_base_url,
            rate_limit=self.oktopost_rate_limit,
            daily_limit=self.oktopost_daily_limit,
        )
        return Tenant.model_construct(
            name=DEFAULT_TENANT,
            api_keys=list(self.shim_api_keys),
            allowed_return_urls=list(self.allowed_return_urls),
            oktopost=account,
            require_start=self.require_start,
        )

    def brand(self, tenant: str) -> Brand:
        """What the hosted pages show for `tenant`: its own brand over the HOSTED_UI_* settings."""
        found = self._tenants.get(tenant)
        return found.brand.over(self._brand) if found is not None else self._brand

    @property
    def tenants(self) -> Tenants:
        """Every tenant, with its caller keys and its Oktopost account."""
        return self._tenants

    @property
    def broker_url(self) -> str:
        """Celery's broker: CELERY_BROKER_URL, else the store's Redis (through its sentinels when set)."""
        broker = self.celery_broker_url or self.redis_url
        return self.store_as_broker_url if broker == self.redis_url else broker

    @property
    def store_as_broker_url(self) -> str:
        """The store's Redis as a broker URL: REDIS_URL, or kombu's sentinel URL (one `sentinel://` per
        sentinel, with REDIS_URL's password and database) when REDIS_SENTINELS is set."""
        if not self.redis_sentinels:
            return self.redis_url
        parsed = urlsplit(self.redis_url)
        auth = parsed.netloc.rpartition("@")[0] + "@" if "@" in parsed.netloc else ""
        database = parsed.path.strip("/") or "0"
        return ";".join(f"sentinel://{auth}{address}/{database}" for address in self.redis_sentinels)

    @property
    def rate_limit(self) -> tuple[int, int]:
        return parse_rate(self.oktopost_rate_limit)


def _traces_installed() -> bool:
    """Whether the otel extra is installed (looked for, not imported)."""
    try:
        return all(find_spec(name) is not None for name in OTEL_MODULES)
    except ModuleNotFoundError:  # a parent package missing
        return False


def check_redis_url(url: str) -> str:
    """A Redis URL as redis-py takes it (redis://, rediss:// or unix://, a port that is a number, a database
    that is one); ValueError saying what is wrong, never with the URL (it may hold a password)."""
    example = "expected a URL such as redis://localhost:6379/0"
    try:
        parse_url(url)
    except ValueError as error:
        reason = (
            "its port is not a number"
            if "Port" in str(error)
            else "the scheme is redis://, rediss:// or unix://"
        )
        raise ValueError(f"{example} ({reason})") from None
    parts = urlsplit(url)
    database = parts.path.strip("/")
    if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
        raise ValueError(f"{example} (its database is not a number)")
    return url


def check_collector_url(url: str) -> str:
    """An OTLP collector's URL, as the exporters take it (`http://host:port`, or `host:port` for grpc)."""
    example = "expected a URL such as http://otel-collector:4318"
    if any(char.isspace() or not char.isprintable() for char in url):
        raise ValueError(f"{example}, without spaces")
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        parts.port  # noqa: B018  (a port that is not a number raises here)
    except ValueError:
        raise ValueError(example) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(example)
    return url


def describe_error(error: ValidationError) -> str:
    """One line naming the first bad setting, as it is spelled in the environment."""
    first = error.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if not first["loc"]:  # a rule across settings: its message starts with the setting's name
        return f"invalid setting {message}"
    return f"invalid setting {str(first['loc'][0]).upper()}: {message}"


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise ConfigError(describe_error(error)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once, with the working directory's `.env` (worker.config.envfile)."""
    try:
        read_env_file()
    except EnvFileError as error:
        raise ConfigError(str(error)) from None
    return load_settings()
