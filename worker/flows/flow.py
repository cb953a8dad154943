"""A flow: one user's authorization, from Step 1 to its one terminal event, and the lifetimes it lives by.

A flow moves   awaiting_callback -> verifying -> (awaiting_selection -> completing ->) completed
and can end as failed or expired from any stage before that. `worker.flows.store` keeps flows in Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from worker.events import DEFAULT_TENANT


class FlowState(StrEnum):
    AWAITING_CALLBACK = "awaiting_callback"
    VERIFYING = "verifying"
    AWAITING_SELECTION = "awaiting_selection"
    COMPLETING = "completing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in (FlowState.COMPLETED, FlowState.FAILED, FlowState.EXPIRED)

    @property
    def stage(self) -> str:
        """The stage an expiry in this state is reported with."""
        return _STAGES[self]


_STAGES = {
    FlowState.AWAITING_CALLBACK: "callback",
    FlowState.VERIFYING: "verify",
    FlowState.AWAITING_SELECTION: "selection",
    FlowState.COMPLETING: "complete",
}
LIVE_STATES = tuple(_STAGES)
# the states in which a task works on the flow (and holds a lease on that work)
WORKING_STATES = (FlowState.VERIFYING, FlowState.COMPLETING)


class BrowserUI(StrEnum):
    """Where the browser goes after the callback: through the shim's own pages (in the partner's window,
    or in a popup the partner's page opened, which hands the result back to it), or straight back to
    the caller's return_url."""

    HOSTED = "hosted"
    POPUP = "popup"
    REDIRECT = "redirect"

    @property
    def pages(self) -> bool:
        """Whether the browser is led through the shim's pages."""
        return self is not BrowserUI.REDIRECT


# What an okt token and a flow id look like, matched whole (fullmatch: a trailing newline is not a token).
# okt tokens look like 591c6053d81978.11578446867279657339b29ad2799b11ca4ff883; a little more is accepted.
# A token has one spelling only: nothing is stripped or decoded after this check, so the token the flow
# is claimed with (its fingerprint) is the token Oktopost is asked about.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9._~-]{8,256}")
FLOW_ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def is_token(text: str) -> bool:
    return TOKEN_SHAPE.fullmatch(text) is not None


def is_flow_id(text: str) -> bool:
    return FLOW_ID_SHAPE.fullmatch(text) is not None


def token_fingerprint(token: str) -> str:
    """What the flow keeps to recognise a repeated callback without keeping the token in the hash."""
    return hashlib.sha256(token.encode()).hexdigest()


def same_fingerprint(fingerprint: str, token: str) -> bool:
    """Whether `token` has this fingerprint, compared in constant time."""
    return hmac.compare_digest(fingerprint, token_fingerprint(token))


@dataclass(frozen=True, slots=True)
class Flow:
    flow_id: str
    state: FlowState
    network: str
    entity_type: str
    reference: str | None
    return_url: str | None
    created_at: float
    deadline: float
    token_expires_at: float | None = None
    callback_at: float | None = None
    token_fp: str = ""
    entities: list[dict[str, Any]] = field(default_factory=list)
    selected_ids: list[str] = field(default_factory=list)
    seq: int = 0
    ui: BrowserUI = BrowserUI.HOSTED
    browser_fp: str = ""  # the hash of the cookie that binds the flow to the browser that came back
    tenant: str = DEFAULT_TENANT  # whose caller key started it: only that tenant's keys see it
    # the Oktopost account its calls are made for and counted against ("": the store's default account,
    # for flows that name none)
    account: str = ""
    budget_slot: str = ""  # the budget slot a parked flow was released with (worker.upstream.parking)
    # the hash of the cookie the browser that opened the flow's start_url was given ("": not opened)
    start_fp: str = ""
    caller_state: str | None = None  # the caller's `state`, echoed on return_url
    redirect_url: str = ""  # Oktopost's consent page, where the start_url sends the browser on
    reconnects: str | None = None  # the connection (credential id) a reconnect's flow connects again
    locale: str = ""  # the language its hosted pages speak ("": the browser's choice)
    # the W3C trace context of the flow's first request, when traces are exported (worker.observing.tracing)
    traceparent: str = ""

    @classmethod
    def from_hash(cls, flow_id: str, raw: dict[str, str]) -> Flow:
        return cls(
            flow_id=flow_id,
            state=FlowState(raw["state"]),
            network=raw["network"],
            entity_type=raw["entity_type"],
            reference=raw.get("reference") or None,
            return_url=raw.get("return_url") or None,
            created_at=float(raw["created_at"]),
            deadline=float(raw["deadline"]),
            token_expires_at=_moment(raw.get("token_expires_at")),
            callback_at=_moment(raw.get("callback_at")),
            token_fp=raw.get("token_fp", ""),
            entities=_listed(raw.get("entities")),
            selected_ids=_listed(raw.get("selected_ids")),
            seq=int(raw.get("seq", 0)),
            # a flow stored before the hosted pages existed was started for the redirect
            ui=BrowserUI(raw.get("ui") or BrowserUI.REDIRECT),
            browser_fp=raw.get("browser_fp", ""),
            # a flow stored before tenants existed was the one tenant's, on the one account
            tenant=raw.get("tenant") or DEFAULT_TENANT,
            account=raw.get("account", ""),
            budget_slot=raw.get("budget_slot", ""),
            start_fp=raw.get("start_fp", ""),
            caller_state=raw.get("caller_state") or None,
            redirect_url=raw.get("redirect_url", ""),
            reconnects=raw.get("reconnects") or None,
            locale=raw.get("locale", ""),
            traceparent=raw.get("traceparent", ""),
        )

    def offered_ids(self) -> list[str]:
        return [str(entity["id"]) for entity in self.entities]

    def seconds_left(self, now: float) -> float:
        """`now` on Redis's clock (worker.clock), the one the deadline is on."""
        return self.deadline - now


def _moment(value: str | None) -> float | None:
    return float(value) if value else None


def _listed(value: str | None) -> list[Any]:
    # a flow has no entities or selection until its later stages: most reads skip a JSON parse of "[]"
    return json.loads(value) if value else []


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """How long flows wait, how long tokens live, how long finished flows are kept."""

    flow_ttl: int = 900
    token_ttl: int = 300
    retention: int = 86400
    lease: float = 75.0  # a running task whose process stops renewing its lease this long is taken up
    queued_lease: float = 150.0  # work queued but not started yet gets this long before a requeue
