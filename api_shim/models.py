"""Bodies of the shim's routes; these shape /openapi.json."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from worker.config.tenants import parse_rate
from worker.connections.records import Connection
from worker.events import EventType
from worker.flows.flow import BrowserUI, FlowState
from worker.oktopost import ENTITY_TYPES, NETWORKS

EntityId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
# Strings checked by the routes (a network in any case; a URL's origin against the tenant's list),
# described by what a client should send: Oktopost's spelling, an http(s) URL.
Network = Annotated[
    str, StringConstraints(max_length=32), WithJsonSchema({"type": "string", "enum": list(NETWORKS)})
]
EntityType = Annotated[
    str, StringConstraints(max_length=16), WithJsonSchema({"type": "string", "enum": list(ENTITY_TYPES)})
]
CallerState = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[ -~]+$")]
Locale = Annotated[str, StringConstraints(max_length=35)]
HTTP_URL = {"type": "string", "format": "uri", "pattern": "^[hH][tT][tT][pP][sS]?://", "maxLength": 2048}
HttpUrlText = Annotated[str, StringConstraints(max_length=2048), WithJsonSchema(HTTP_URL)]
# an empty return_url is no return_url
OptionalUrl = Annotated[
    str,
    StringConstraints(max_length=2048),
    WithJsonSchema({"anyOf": [HTTP_URL, {"type": "string", "maxLength": 0}]}),
]
# Strings the shim writes: described by their values or their format
FlowStateName = Annotated[
    str, WithJsonSchema({"type": "string", "enum": [state.value for state in FlowState]})
]
EventTypeName = Annotated[str, WithJsonSchema({"type": "string", "enum": list(get_args(EventType))})]
UrlText = Annotated[str, WithJsonSchema({"type": "string", "format": "uri"})]
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
EVENT_TYPES = frozenset(get_args(EventType))
EVENT_FAMILIES = frozenset(event_type.split(".")[0] for event_type in EVENT_TYPES)
# an endpoint's filter entry: an event type, or a family of them ending in .*
EVENT_FILTER_SCHEMA = {
    "type": "string",
    "enum": sorted(EVENT_TYPES) + sorted(f"{family}.*" for family in EVENT_FAMILIES),
    "examples": ["connection.*"],
}
EventFilterText = Annotated[str, WithJsonSchema(EVENT_FILTER_SCHEMA)]


class AuthorizationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    network: Network = Field(
        examples=["LinkedIn"],
        description="Twitter, Facebook, LinkedIn, YouTube or Instagram, any case",
    )
    type: EntityType = Field(default="profile", description="profile, page or group, any case")
    return_url: OptionalUrl | None = Field(
        default=None,
        description="where the browser goes after the callback; its origin must be in ALLOWED_RETURN_URLS",
    )
    reference: str | None = Field(
        default=None, max_length=256, description="your own id for this flow, echoed in every event"
    )
    state: CallerState | None = Field(
        default=None,
        description="your own value for this flow (printable ASCII), echoed on return_url as `state` and "
        "in authorization.started's data",
    )
    ui: BrowserUI = Field(
        default=BrowserUI.HOSTED,
        description="hosted: after the callback the browser is led through the shim's own pages "
        "(/connect/{flow_id}); popup: the same pages in a popup opened by the partner's page with "
        "/static/connect.js, which hands the result back to it (needs a return_url); redirect: the "
        "callback sends it straight back to return_url",
    )
    locale: Locale | None = Field(
        default=None,
        examples=["de"],
        description="the language of the hosted pages: en, de, fr or es (a tag such as de-AT counts as its "
        "language); absent: the browser's Accept-Language, else English",
    )


class AuthorizationCreated(BaseModel):
    flow_id: str
    redirect_url: UrlText = Field(description="Oktopost's page to send the user's browser to")
    start_url: UrlText = Field(
        description="send the user's browser here: it binds the flow to that browser, then goes on to "
        "redirect_url"
    )
    channel: str
    status_url: UrlText
    expires_at: Timestamp


class FlowStatus(BaseModel):
    flow_id: str
    status: FlowStateName
    network: Network
    type: EntityType
    reference: str | None
    events: list[dict[str, Any]]


class SelectionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: list[EntityId] = Field(min_length=1, max_length=100)


class SelectionAccepted(BaseModel):
    flow_id: str
    status: Literal["completing"]
    ids: list[str]


def _known_filter(entry: str) -> str:
    family, _, name = entry.partition(".")
    if entry in EVENT_TYPES or (name == "*" and family in EVENT_FAMILIES):
        return entry
    raise ValueError(
        f"not an event type or family: {entry[:64]!r} (types: {', '.join(sorted(EVENT_TYPES))}; "
        f"families: {', '.join(sorted(f + '.*' for f in EVENT_FAMILIES))})"
    )


def _known_rate(rate: str | None) -> str | None:
    if rate:
        parse_rate(rate)
    return rate or None


EventFilter = Annotated[
    str,
    StringConstraints(max_length=64, pattern=r"^[a-z_]+\.([a-z_]+|\*)$"),
    AfterValidator(_known_filter),
    WithJsonSchema(EVENT_FILTER_SCHEMA),
]
RateLimit = Annotated[
    str,
    StringConstraints(
        max_length=32, pattern=r"^[1-9][0-9]{0,5}/([1-9][0-9]{0,4} )?(second|minute|hour|day)s?$"
    ),
    AfterValidator(_known_rate),
    Field(
        examples=["20/second"], description="attempts to this endpoint across every worker, e.g. 20/second"
    ),
]


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: HttpUrlText = Field(
        examples=["https://app.example/hooks/oktopost"],
        description="https (or http on a loopback host listed in WEBHOOK_ALLOWED_HOSTS); no user "
        "information, no fragment; its host must not resolve to a loopback, private or link-local address "
        "unless listed",
    )
    events: list[EventFilter] | None = Field(
        default=None,
        max_length=16,
        description="the event types to send, each a type or a family ending in .* (connection.*); "
        "absent: every type",
    )
    rate_limit: RateLimit | None = None


class WebhookChange(BaseModel):
    """PATCH /v1/webhooks/{id}: what is given changes; rate_limit null removes the limit."""

    model_config = ConfigDict(extra="ignore")

    url: HttpUrlText | None = Field(default=None, description="as in POST /v1/webhooks")
    events: list[EventFilter] | None = Field(
        default=None, max_length=16, description="as in POST /v1/webhooks; [] means every type"
    )
    rate_limit: RateLimit | None = None


class Webhook(BaseModel):
    id: str
    url: UrlText
    events: list[EventFilterText]
    created_at: Timestamp
    status: Literal["enabled", "disabled"] = "enabled"
    disabled_at: Timestamp | None = None
    rate_limit: str | None = Field(
        default=None, exclude_if=lambda value: value is None, description="shown when the endpoint has one"
    )


class WebhookSecret(BaseModel):
    secret: str = Field(
        description="the new whsec_<base64> secret, shown only here; the old one still signs beside it "
        "for WEBHOOK_SECRET_OVERLAP_SECONDS"
    )


def _written_out(value: object) -> object:
    """A time as the description says, not a number that pydantic would read as seconds since 1970."""
    if not isinstance(value, str):
        raise ValueError("an ISO 8601 time with its offset is expected")
    datetime.fromisoformat(value)  # a ValueError for what is not one ("0" is, to pydantic)
    return value


class EnableRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    replay_since: Annotated[AwareDatetime, BeforeValidator(_written_out)] | None = Field(
        default=None,
        description="send again what the tenant's events index holds since then (ISO 8601 with offset)",
    )


class WebhookEnabled(Webhook):
    queued: int = Field(default=0, description="events queued again by replay_since")
    next_since: Timestamp | None = Field(
        default=None,
        description="null: every event since then was queued; else the replay stopped there (at most"
        " WEBHOOK_REPLAY_MAX_EVENTS events per request, or the tenant's WEBHOOK_MAX_PENDING deliveries"
        " pending): replay again with this `since` to go on",
    )


class WebhookCreated(BaseModel):
    id: str
    url: UrlText
    events: list[EventFilterText]
    created_at: Timestamp
    secret: str = Field(description="whsec_<base64>: verify signatures with it; shown only in this answer")


class WebhookList(BaseModel):
    webhooks: list[Webhook]


class DeliveryStatus(BaseModel):
    event_id: str
    type: str
    flow_id: str | None = Field(description="null for an event of no flow (a connection's, an endpoint's)")
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    next_attempt_at: Timestamp | None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryStatus]
    next_cursor: str | None = Field(default=None, description="the next page's cursor; null: the last page")


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    since: Annotated[AwareDatetime, BeforeValidator(_written_out)] = Field(
        description="ISO 8601 time with its offset, e.g. 2026-11-28T14:00:00Z"
    )


class ReplayQueued(BaseModel):
    queued: int
    next_since: Timestamp | None = Field(
        default=None,
        description="null: every event since then was queued; else the replay stopped there (at most"
        " WEBHOOK_REPLAY_MAX_EVENTS events per request, or the tenant's WEBHOOK_MAX_PENDING deliveries"
        " pending): replay again with this `since` to go on",
    )


class ConnectionList(BaseModel):
    connections: list[Connection]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class ConnectionDeleting(BaseModel):
    id: str
    status: Literal["deleting"] = "deleting"


class ReconnectRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    return_url: str | None = Field(
        default=None,
        max_length=2048,
        description="where the browser goes after the callback; its origin must be in ALLOWED_RETURN_URLS",
    )
    ui: BrowserUI = Field(default=BrowserUI.HOSTED, description="as for POST /v1/authorizations")
    state: CallerState | None = Field(default=None, description="as for POST /v1/authorizations")
    locale: Locale | None = Field(default=None, description="as for POST /v1/authorizations")
