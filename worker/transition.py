"""One transition of a flow: what it changes, and the one Lua call (`scripts/transition.lua`) that makes
it, state, event, stream entry and both publishes together, or none of them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any

import redis

from worker import scripts
from worker.events import FlowEvent
from worker.flow import FlowState
from worker.keys import RedisNames

if TYPE_CHECKING:  # the queueing module brings Celery; a transition needs only the message's fields
    from worker.queueing import QueuedTask


class TransitionOutcome(StrEnum):
    DONE = "done"
    MISSING = "missing"  # no such flow
    CONFLICT = "conflict"  # the flow is not in a state this transition starts from
    EARLY = "early"  # an expiry before the flow's deadline (a callback moved it)
    TOKEN_IN_USE = "token_in_use"  # noqa: S105 - an outcome: the okt token was claimed by another flow


@dataclass(frozen=True, slots=True)
class Transition:
    outcome: TransitionOutcome
    seq: int = 0  # the event's seq, when DONE
    state: FlowState | None = None  # the new state when DONE, the current one on CONFLICT
    token_fp: str = ""  # on CONFLICT: the fingerprint of the token the flow holds

    @property
    def done(self) -> bool:
        return self.outcome is TransitionOutcome.DONE


class Drop(Enum):
    """A transition removes this (the flow's deadline, its lease or its token); None keeps it as it is."""

    DROP = "-"


DROP = Drop.DROP


@dataclass(frozen=True, slots=True)
class Change:
    """What a transition does beside the state change and the event."""

    fields: dict[str, str]
    live_until: float | None = None  # the hash and stream outlive this by the retention
    deadline: float | Drop | None = None
    lease: float | Drop | None = None
    token: str | Drop | None = None
    only_after: float | None = None  # the transition happens only once the flow's deadline has passed
    claim_key: str | None = None
    queue: QueuedTask | None = None


class TransitionScript:
    """`scripts/transition.lua` with typed arguments."""

    def __init__(self, client: redis.Redis, names: RedisNames, retention: int) -> None:
        self._script = scripts.register(client, "transition")
        self.names = names
        self.retention = retention  # seconds a flow's hash and stream are kept after its last change

    def __call__(
        self, flow_id: str, allowed: tuple[FlowState, ...], state: FlowState, event: FlowEvent, change: Change
    ) -> Transition:
        """`allowed`: the states the flow may be in (none: it must not exist yet)."""
        now = time.time()
        live_for = max(0.0, (change.live_until or now) - now)
        token_ms = max(1, int(live_for * 1000)) if isinstance(change.token, str) else 0
        queue = change.queue
        result = self._script(
            keys=[
                self.names.flow_state(flow_id),
                self.names.flow_stream(flow_id),
                self.names.deadlines,
                self.names.flow_token(flow_id),
                self.names.leases,
                *([change.claim_key] if change.claim_key else []),
            ],
            args=[
                flow_id,
                "," + ",".join(allowed) + "," if allowed else "",
                state.value,
                event.to_json(),
                self.names.flow_channel(flow_id),
                self.names.all_events_channel,
                self.retention + int(live_for) + 1,
                _arg(change.deadline),
                _arg(change.lease),
                _arg(change.token),
                token_ms,
                "" if change.only_after is None else repr(change.only_after),
                *((queue.queue, queue.message, queue.event_channel, queue.event) if queue else ("",) * 4),
                *(item for pair in change.fields.items() for item in pair),
            ],
        )
        outcome = TransitionOutcome(_text(result[0]) if _text(result[0]) != "ok" else "done")
        if outcome is TransitionOutcome.DONE:
            return Transition(outcome, seq=int(result[1]), state=state)
        if outcome is TransitionOutcome.CONFLICT:
            current = FlowState(_text(result[1])) if result[1] else None
            return Transition(outcome, state=current, token_fp=_text(result[2]))
        return Transition(outcome)


def _arg(value: float | str | Drop | None) -> str:
    """The Lua script's encoding of a change: "" keeps, "-" drops, anything else is the new value."""
    if value is None:
        return ""
    if isinstance(value, Drop):
        return value.value
    return value if isinstance(value, str) else repr(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
