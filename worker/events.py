"""The events a flow publishes (docs/api.md): one pydantic model per type, and their JSON Schema.

Events are built here and given their `seq` inside Redis, by the flow store's Lua transition, so that the
state change, the stream entry and both publishes happen at once.
"""

from __future__ import annotations

import json
import math
import os
import time
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
    "connection.invalid",
    "connection.recovered",
    "connection.deleted",
]

DEFAULT_TENANT = "default"  # without a tenants file, every flow is the one tenant's
TERMINAL_TYPES = frozenset({"connection.completed", "authorization.failed", "authorization.expired"})
SCHEMA_PATH = Path(__file__).with_name("schema") / "event.schema.json"

# The flow store swaps this for the real sequence number inside its Lua step; `seq` is serialised
# right after `v` and `id`, before anything a caller chose, so the first occurrence is always ours.
SEQ_PLACEHOLDER = '"seq":0,'


_last_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def utc_timestamp(epoch: float | None = None) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, as the contract's examples show: the moment rounded to
    the microsecond as `datetime.fromtimestamp` rounds it, then cut to the millisecond. Every event of a
    flow has one: the date and time of the second are formatted once per second."""
    global _last_second
    fraction, whole = math.modf(time.time() if epoch is None else epoch)
    micros = round(fraction * 1_000_000)
    second, micros = int(whole) + micros // 1_000_000, micros % 1_000_000
    formatted, text = _last_second
    if formatted != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _last_second = (second, text)
    return f"{text}{micros // 1000:03d}Z"


def new_event_id() -> str:
    """A random UUID's text, as `str(uuid.uuid4())` writes it, for an event's `id`: built from 16 random
    bytes directly, at less than half the CPU (uuid.UUID checks its input in Python), as every event of
    every flow, and every connection a flow makes, takes one."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    digits = raw.hex()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


class _Data(BaseModel):
    model_config = ConfigDict(extra="allow")


class StartedData(_Data):
    expires_at: str
    state: str | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="the caller's `state` for this flow, when it gave one",
    )
    reconnects: str | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="the connection (credential id) this flow reconnects, for a reconnect's flow",
    )


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
    id: str = Field(default_factory=new_event_id)
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


class ConnectionShown(_Data):
    """A connection as `GET /v1/connections/{id}` answers it."""

    id: str
    network: str
    entity_type: EntityType
    name: str
    display_name: str | None = None
    status: Literal["valid", "invalid"]
    references: list[str]
    connected_at: str
    status_changed_at: str
    checked_at: str | None = None
    flow_id: str


class ConnectionChangeData(_Data):
    connection: ConnectionShown


class ConnectionDeletedData(ConnectionChangeData):
    reason: Literal["requested", "upstream"] = Field(
        description="requested: the caller's DELETE; upstream: Oktopost no longer lists it"
    )


class ConnectionEvent(BaseModel):
    """A connection's lifecycle event: no flow_id and no seq (it belongs to no flow)."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    id: str = Field(default_factory=new_event_id)
    type: str
    at: str = Field(default_factory=utc_timestamp)
    tenant: str = DEFAULT_TENANT
    connection_id: str
    network: str
    entity_type: EntityType
    reference: str | None = Field(default=None, description="the first of the connection's references")
    data: Any

    @property
    def terminal(self) -> bool:
        return False

    @property
    def flow_id(self) -> None:
        """None: a connection's event belongs to no flow (so code that reads any event's flow_id works)."""
        return None

    @property
    def seq(self) -> None:
        """None: a connection's events are not numbered within a flow."""
        return None


class DisabledData(_Data):
    endpoint_id: str
    url: str
    failing_since: str = Field(description="since when every attempt to the endpoint failed (no 2xx)")


class WebhookDisabled(BaseModel):
    """A tenant's webhook endpoint failed for WEBHOOK_DISABLE_AFTER_SECONDS and was disabled: not a flow's
    event (no `flow_id`, no `seq`)."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    id: str = Field(default_factory=new_event_id)
    type: Literal["webhook.disabled"] = "webhook.disabled"
    at: str = Field(default_factory=utc_timestamp)
    tenant: str = DEFAULT_TENANT
    data: DisabledData

    def to_json(self) -> str:
        return self.model_dump_json()


class ConnectionInvalid(ConnectionEvent):
    type: Literal["connection.invalid"] = "connection.invalid"
    data: ConnectionChangeData


class ConnectionRecovered(ConnectionEvent):
    type: Literal["connection.recovered"] = "connection.recovered"
    data: ConnectionChangeData


class ConnectionDeleted(ConnectionEvent):
    type: Literal["connection.deleted"] = "connection.deleted"
    data: ConnectionDeletedData


CONNECTION_TYPES = frozenset({"connection.invalid", "connection.recovered", "connection.deleted"})

Event = Annotated[
    AuthorizationStarted
    | CallbackReceived
    | SelectionRequired
    | SelectionSubmitted
    | ConnectionCompleted
    | AuthorizationFailed
    | AuthorizationExpired
    | WebhookDisabled
    | ConnectionInvalid
    | ConnectionRecovered
    | ConnectionDeleted,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(raw: str | bytes) -> Event:
    return EVENT_ADAPTER.validate_json(raw)


# `at` as every event writes it: UTC, with milliseconds (utc_timestamp)
AT_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"


def event_json_schema() -> dict[str, Any]:
    """The models' schema, made as strict as the events are: a published event carries every field of its
    model (the models' defaults serve those who build one), `seq` from 1, `at` as utc_timestamp writes it."""
    schema = EVENT_ADAPTER.json_schema()
    for reference in schema["discriminator"]["mapping"].values():
        definition = schema["$defs"][reference.rsplit("/", 1)[-1]]
        properties = definition["properties"]
        definition["required"] = list(properties)
        if "seq" in properties:
            properties["seq"]["minimum"] = 1
        properties["at"]["pattern"] = AT_PATTERN
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
