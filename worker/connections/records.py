"""Connections as callers see them, and the store that keeps them in Redis (never expiring), lists them a
page at a time and removes them. Every change of a connection's status is one Lua step with its event
(scripts/connection_record.lua and the steps that include it)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import redis
from pydantic import BaseModel, Field

from worker import scripts
from worker.events import new_event_id, utc_timestamp
from worker.keys import RedisNames
from worker.oktopost.vocabulary import NETWORKS

ConnectionStatus = Literal["valid", "invalid"]
STATUSES: tuple[ConnectionStatus, ...] = ("valid", "invalid")
MAX_PAGE = 100
_SCAN_BATCH = 200  # ids read per round while filtering a page


def status_of(credential_status: str) -> ConnectionStatus:
    """A connection's status from a credential's `Status` as Oktopost spells it: `valid` in any case is
    valid, anything else invalid (connection_record.lua decides the same for a flow's credentials)."""
    return "valid" if credential_status.lower() == "valid" else "invalid"


class Connection(BaseModel):
    """A credential a flow of the tenant connected, as `GET /v1/connections/{id}` answers it."""

    id: str = Field(description="Oktopost's credential id")
    network: str = Field(json_schema_extra={"enum": list(NETWORKS)})
    entity_type: Literal["profile", "page", "group"]
    name: str
    display_name: str | None = None
    status: ConnectionStatus
    references: list[str] = Field(description="the `reference` of every flow that connected it")
    connected_at: str
    status_changed_at: str
    checked_at: str | None = Field(description="the last successful health check; null until then")
    flow_id: str = Field(description="the flow that last connected it")


class InvalidCursor(ValueError):
    """A cursor that this store did not hand out."""


@dataclass(frozen=True, slots=True)
class ConnectionPage:
    connections: list[Connection]
    next_cursor: str | None


class DeleteAsked(StrEnum):
    ASKED = "asked"  # the deletion is marked: queue its task
    DELETING = "deleting"  # asked already and under way
    MISSING = "missing"


_CURSOR_MARK = "after:"  # what a cursor says inside, so a string that merely decodes is refused


def encode_cursor(connection_id: str) -> str:
    """Opaque to callers: the last id a page listed."""
    return base64.urlsafe_b64encode((_CURSOR_MARK + connection_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(cursor) from None
    if not text.startswith(_CURSOR_MARK) or len(text) == len(_CURSOR_MARK):
        raise InvalidCursor(cursor)
    return text.removeprefix(_CURSOR_MARK)


def shown(raw: bytes | str) -> Connection:
    """A stored record without its internal fields (those named with a leading `_`)."""
    record = json.loads(raw)
    return Connection.model_validate({k: v for k, v in record.items() if not k.startswith("_")})


class ConnectionStore:
    def __init__(self, client: redis.Redis, names: RedisNames, retention: int) -> None:
        self.redis: Any = client  # redis-py annotates commands as sync-or-async; this is sync
        self.names = names
        self.retention = retention  # seconds the all-events stream keeps an event
        self._delete = scripts.register(client, "connection_delete")

    def get(self, tenant: str, connection_id: str) -> Connection | None:
        raw = self.redis.hget(self.names.tenant_connections(tenant), connection_id)
        return shown(raw) if raw is not None else None

    def record(self, tenant: str, connection_id: str) -> dict[str, Any] | None:
        """The stored record with its internal fields (`_account`, `_touched`, `_deleting`)."""
        raw = self.redis.hget(self.names.tenant_connections(tenant), connection_id)
        return json.loads(raw) if raw is not None else None

    def page(
        self,
        tenant: str,
        limit: int = 50,
        cursor: str | None = None,
        *,
        reference: str | None = None,
        network: str | None = None,
        status: str | None = None,
    ) -> ConnectionPage:
        """The tenant's connections after `cursor`, in id order: an id is listed once across pages,
        however many connections are made or removed meanwhile. InvalidCursor for a foreign cursor."""
        limit = max(1, min(MAX_PAGE, limit))
        start = f"({decode_cursor(cursor)}" if cursor else "-"
        order, found = self.names.tenant_connection_order(tenant), list[Connection]()
        last_seen: str | None = None
        while len(found) < limit:
            ids = [_text(i) for i in self.redis.zrangebylex(order, start, "+", start=0, num=_SCAN_BATCH)]
            if not ids:
                return ConnectionPage(found, None)
            records = self.redis.hmget(self.names.tenant_connections(tenant), ids)
            for connection_id, raw in zip(ids, records, strict=True):
                last_seen = connection_id
                if raw is None:
                    continue
                connection = shown(raw)
                if _matches(connection, reference, network, status):
                    found.append(connection)
                    if len(found) == limit:
                        break
            start = f"({last_seen}"
        more = self.redis.zrangebylex(order, start, "+", start=0, num=1)
        return ConnectionPage(found, encode_cursor(found[-1].id) if more else None)

    def ask_delete(self, tenant: str, connection_id: str) -> DeleteAsked:
        answer = self._delete(keys=self._delete_keys(tenant), args=["ask", tenant, connection_id])
        return DeleteAsked(_text(answer))

    def deleted(self, tenant: str, connection_id: str, account: str) -> bool:
        """The connection's deletion is done upstream: it goes, with connection.deleted (requested);
        False when it was gone already (a repeated task)."""
        names = self.names
        args: list[str | int] = [
            "done",
            tenant,
            connection_id,
            new_event_id(),
            utc_timestamp(),
            names.all_events_channel,
            names.tenant_channel(tenant),
            names.connection_channel(""),
            self.retention * 1000,
            names.account(account).connections,
        ]
        return _text(self._delete(keys=self._delete_keys(tenant), args=args)) == "deleted"

    def deletions_due(self, older_than_ms: int, limit: int = 100) -> list[tuple[str, str]]:
        """(tenant, id) of deletions asked for before `older_than_ms` (epoch ms) and still not done."""
        members = self.redis.zrangebyscore(self.names.connections_deleting, "-inf", older_than_ms, 0, limit)
        return [_member(member) for member in members]

    def deleting(self, tenant: str, connection_id: str) -> bool:
        """Whether the connection's deletion is still asked for (a flow that connects it again calls the
        deletion off)."""
        record = self.record(tenant, connection_id)
        return record is not None and record.get("_deleting") is not None

    def forget_deletion(self, tenant: str, connection_id: str) -> None:
        """A deletion with nothing left to do leaves the deletions under way."""
        self.redis.zrem(self.names.connections_deleting, f"{tenant}:{connection_id}")

    def touch_deletion(self, tenant: str, connection_id: str, now_ms: int) -> None:
        self.redis.zadd(self.names.connections_deleting, {f"{tenant}:{connection_id}": now_ms}, xx=True)

    def members(self, account: str) -> list[tuple[str, str]]:
        """(tenant, id) of every connection of the Oktopost account."""
        return sorted(_member(m) for m in self.redis.smembers(self.names.account(account).connections))

    def accounts(self) -> list[str]:
        return sorted(_text(account) for account in self.redis.smembers(self.names.connection_accounts))

    def counts(self) -> dict[tuple[str, str], int]:
        """(account, status) -> how many connections (for /metrics; kept by the Lua steps)."""
        counted = {}
        for field, value in self.redis.hgetall(self.names.connection_counts).items():
            account, _, status = _text(field).rpartition("|")
            counted[(account, status)] = int(value)
        return counted

    def _delete_keys(self, tenant: str) -> list[str]:
        names = self.names
        return [
            names.tenant_connections(tenant),
            names.tenant_connection_order(tenant),
            names.connections_deleting,
            names.all_events_stream,
            names.connection_counts,
        ]


def _matches(connection: Connection, reference: str | None, network: str | None, status: str | None) -> bool:
    return (
        (reference is None or reference in connection.references)
        and (network is None or connection.network == network)
        and (status is None or connection.status == status)
    )


def _member(member: bytes | str) -> tuple[str, str]:
    tenant, _, connection_id = _text(member).partition(":")
    return tenant, connection_id


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
