"""Bodies of the shim's routes; these shape /openapi.json."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from worker.config.tenants import parse_rate
from worker.events import EventType
from worker.flows.flow import BrowserUI

EntityId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class AuthorizationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    network: str = Field(
        max_length=32,
        examples=["LinkedIn"],
        description="Twitter, Facebook, LinkedIn, YouTube or Instagram, any case",
    )
    type: str = Field(default="profile", max_length=16, description="profile, page or group")
    return_url: str | None = Field(
        default=None,
        max_length=2048,
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
    redirect_url: str
    channel: str
    status_url: str
    expires_at: str


class FlowStatus(BaseModel):
    flow_id: str
    status: str
    network: str
    type: str
    reference: str | None
    events: list[dict[str, Any]]


class SelectionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: list[EntityId] = Field(min_length=1, max_length=100)


class SelectionAccepted(BaseModel):
    flow_id: str
    status: str
    ids: list[str]


EVENT_TYPES = frozenset(get_args(EventType))
EVENT_FAMILIES = frozenset(event_type.split(".")[0] for event_type in EVENT_TYPES)


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
        count, period = parse_rate(rate)
        if count / period > 1000:
            raise ValueError("at most 1000 attempts a second")
    return rate or None


EventFilter = Annotated[
    str,
    StringConstraints(max_length=64, pattern=r"^[a-z_]+\.([a-z_]+|\*)$"),
    AfterValidator(_known_filter),
]
RateLimit = Annotated[
    str,
    StringConstraints(max_length=32),
    AfterValidator(_known_rate),
    Field(
        examples=["20/second"], description="attempts to this endpoint across every worker, e.g. 20/second"
    ),
]


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str = Field(
        max_length=2048,
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

    url: str | None = Field(default=None, max_length=2048, description="as in POST /v1/webhooks")
    events: list[EventFilter] | None = Field(
        default=None, max_length=16, description="as in POST /v1/webhooks; [] means every type"
    )
    rate_limit: RateLimit | None = None


class Webhook(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: str
    status: Literal["enabled", "disabled"] = "enabled"
    disabled_at: str | None = None
    rate_limit: str | None = Field(
        default=None, exclude_if=lambda value: value is None, description="shown when the endpoint has one"
    )


class WebhookSecret(BaseModel):
    secret: str = Field(
        description="the new whsec_<base64> secret, shown only here; the old one still signs beside it "
        "for WEBHOOK_SECRET_OVERLAP_SECONDS"
    )


class EnableRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    replay_since: AwareDatetime | None = Field(
        default=None,
        description="send again what the tenant's stream holds since then (ISO 8601 with offset)",
    )


class WebhookEnabled(Webhook):
    queued: int = Field(default=0, description="events queued again by replay_since")


class WebhookCreated(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: str
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
    next_attempt_at: str | None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryStatus]
    next_cursor: str | None = Field(default=None, description="the next page's cursor; null: the last page")


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    since: AwareDatetime = Field(description="ISO 8601 time with its offset, e.g. 2026-11-28T14:00:00Z")


class ReplayQueued(BaseModel):
    queued: int
