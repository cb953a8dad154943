"""The events a flow publishes (docs/api.md): one pydantic model per type, and their JSON Schema.

Events are built here and given their `seq` inside Redis, by the flow store's Lua transition, so that the
state change, the stream entry and both publishes happen at once.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

EntityType = Literal["profile", "page", "group"]
ExpiredStage = Literal["callback", "verify", "selection", "complete"]
ExpiredReason = Literal["upstream_blocked"]
EventType = Literal[  # every event type; a webhook endpoint subscribes to some of them
    "authorization.started",
    "callback.received",
    "selection.required",
    "selection.submitted",
    "connection.completed",
    "authorization.failed",
    "authorization.expired",
    "webhook.disabled",
]

DEFAULT_TENANT = "default"  # without a tenants file, every flow is the one tenant's
TERMINAL_TYPES = frozenset({"connection.completed", "authorization.failed", "authorization.expired"})
SCHEMA_PATH = Path(__file__).with_name("schema") / "event.schema.json"

# The flow store swaps this for the real sequence number inside its Lua step; `seq` is serialised
# right after `v` and `id`, before anything a caller chose, so the first occurrence is always ours.
SEQ_PLACEHOLDER = '"seq":0,'


def utc_timestamp(epoch: float | None = None) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, as the contract's examples show."""
    moment = datetime.now(UTC) if epoch is None else datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow")


class StartedData(_Data):
    expires_at: str


class CallbackData(_Data):
    token_expires_at: str


class EntityOffer(_Data):
    id: str
    name: str
    network: str
    image_link: str | None = None
    network_username: str | None = None
    is_connected: bool = False


class SelectionRequiredData(_Data):
    entities: list[EntityOffer]


class SelectionSubmittedData(_Data):
    ids: list[str]


class ConnectedCredential(_Data):
    id: str
    name: str
    status: str = Field(description="as Oktopost gave it: valid, or invalid")
    network: str
    display_name: str | None = Field(
        default=None, exclude_if=lambda value: value is None, description="Oktopost's DisplayName, when given"
    )


class CompletedData(_Data):
    credentials: list[ConnectedCredential]


class FailedData(_Data):
    code: str
    message: str
    retryable: bool
    attempts: int


class ExpiredData(_Data):
    stage: ExpiredStage
    reason: ExpiredReason | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="upstream_blocked: Oktopost's block of the account (after a 429) outlived the token",
    )


class FlowEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    seq: int = Field(default=0, ge=0, description="1, 2, 3... within a flow; set by the flow store")
    flow_id: str
    type: str
    at: str = Field(default_factory=utc_timestamp)
    network: str
    entity_type: EntityType
    reference: str | None = None
    tenant: str = Field(default=DEFAULT_TENANT, description="the tenant whose caller key started the flow")
    data: Any

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    def to_json(self) -> str:
        return self.model_dump_json()


class AuthorizationStarted(FlowEvent):
    type: Literal["authorization.started"] = "authorization.started"
    data: StartedData


class CallbackReceived(FlowEvent):
    type: Literal["callback.received"] = "callback.received"
    data: CallbackData


class SelectionRequired(FlowEvent):
    type: Literal["selection.required"] = "selection.required"
    data: SelectionRequiredData


class SelectionSubmitted(FlowEvent):
    type: Literal["selection.submitted"] = "selection.submitted"
    data: SelectionSubmittedData


class ConnectionCompleted(FlowEvent):
    type: Literal["connection.completed"] = "connection.completed"
    data: CompletedData


class AuthorizationFailed(FlowEvent):
    type: Literal["authorization.failed"] = "authorization.failed"
    data: FailedData


class AuthorizationExpired(FlowEvent):
    type: Literal["authorization.expired"] = "authorization.expired"
    data: ExpiredData


class DisabledData(_Data):
    endpoint_id: str
    url: str
    failing_since: str = Field(description="since when every attempt to the endpoint failed (no 2xx)")


class WebhookDisabled(BaseModel):
    """A tenant's webhook endpoint failed for WEBHOOK_DISABLE_AFTER_SECONDS and was disabled: not a flow's
    event (no `flow_id`, no `seq`)."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    type: Literal["webhook.disabled"] = "webhook.disabled"
    at: str = Field(default_factory=utc_timestamp)
    tenant: str = DEFAULT_TENANT
    data: DisabledData

    def to_json(self) -> str:
        return self.model_dump_json()


Event = Annotated[
    AuthorizationStarted
    | CallbackReceived
    | SelectionRequired
    | SelectionSubmitted
    | ConnectionCompleted
    | AuthorizationFailed
    | AuthorizationExpired
    | WebhookDisabled,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(raw: str | bytes) -> Event:
    return EVENT_ADAPTER.validate_json(raw)


def event_json_schema() -> dict[str, Any]:
    schema = EVENT_ADAPTER.json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/oktopost-connect/oktopost-connect/event.schema.json",
        "title": "oktopost-connect event",
        **schema,
    }


def render_schema() -> str:
    return json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.parent.mkdir(exist_ok=True)
    SCHEMA_PATH.write_text(render_schema())
    print(f"wrote {SCHEMA_PATH}")
