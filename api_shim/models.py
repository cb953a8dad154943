"""Bodies of the shim's routes; these shape /openapi.json."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

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
        "(/connect/{flow_id}); popup: the same pages in a popup opened by the partner's page with "
        "/static/connect.js, which hands the result back to it (needs a return_url); redirect: the "
        "callback sends it straight back to return_url",
    )
    locale: str | None = Field(
        default=None,
        max_length=35,
        examples=["de"],
        description="the language of the hosted pages: en, de, fr or es (a tag such as de-AT counts as its "
        "language); absent: the browser's Accept-Language, else English",
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


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str = Field(
        max_length=2048,
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
    url: str
    events: list[str]
    created_at: str


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
    next_attempt_at: str | None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryStatus]


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    since: AwareDatetime = Field(description="ISO 8601 time with its offset, e.g. 2026-11-28T14:00:00Z")


class ReplayQueued(BaseModel):
    queued: int
