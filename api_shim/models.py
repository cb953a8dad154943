"""Bodies of the shim's routes; these shape /openapi.json."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

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
    ui: BrowserUI = Field(
        default=BrowserUI.HOSTED,
        description="hosted: after the callback the browser is led through the shim's own pages "
        "(/connect/{flow_id}); redirect: the callback sends it straight back to return_url",
    )


class AuthorizationCreated(BaseModel):
    flow_id: str
    redirect_url: UrlText = Field(description="Oktopost's page to send the user's browser to")
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


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: HttpUrlText = Field(
        examples=["https://app.example/hooks/oktopost"],
        description="https (or http on a loopback host listed in WEBHOOK_ALLOWED_HOSTS); no user "
        "information, no fragment; its host must not resolve to a loopback, private or link-local address "
        "unless listed",
    )
    events: list[EventType] | None = Field(
        default=None, max_length=16, description="the event types to send; absent: every type"
    )


class Webhook(BaseModel):
    id: str
    url: UrlText
    events: list[EventTypeName]
    created_at: Timestamp


class WebhookCreated(Webhook):
    secret: str = Field(description="whsec_<base64>: verify signatures with it; shown only in this answer")


class WebhookList(BaseModel):
    webhooks: list[Webhook]


class DeliveryStatus(BaseModel):
    event_id: str
    type: str
    flow_id: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    next_attempt_at: Timestamp | None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryStatus]


def _written_out(value: object) -> object:
    """A time as the description says, not a number that pydantic would read as seconds since 1970."""
    if not isinstance(value, str):
        raise ValueError("an ISO 8601 time with its offset is expected")
    datetime.fromisoformat(value)  # a ValueError for what is not one ("0" is, to pydantic)
    return value


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    since: Annotated[AwareDatetime, BeforeValidator(_written_out)] = Field(
        description="ISO 8601 time with its offset, e.g. 2026-11-28T14:00:00Z"
    )


class ReplayQueued(BaseModel):
    queued: int
