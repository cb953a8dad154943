"""The flow store: flows in Redis, and every transition a flow makes, each one atomic Lua call.

Every transition publishes exactly one event; a transition whose expected state no longer holds does
nothing, which is what makes redelivered tasks, repeated callbacks and racing expiry sweeps harmless.
The Lua script (`scripts/transition.lua`) changes the state, gives the event its `seq`, appends it to
the flow's stream and publishes it on both channels, or does none of it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import redis

from worker import scripts
from worker.events import (
    AuthorizationExpired,
    AuthorizationFailed,
    AuthorizationStarted,
    CallbackData,
    CallbackReceived,
    CompletedData,
    ConnectedCredential,
    ConnectionCompleted,
    EntityOffer,
    ExpiredData,
    FailedData,
    FlowEvent,
    SelectionRequired,
    SelectionRequiredData,
    SelectionSubmitted,
    SelectionSubmittedData,
    StartedData,
    utc_timestamp,
)
from worker.flow import LIVE_STATES, WORKING_STATES, Flow, FlowState, Lifetimes, token_fingerprint
from worker.keys import RedisNames
from worker.transition import DROP, Change, Transition, TransitionOutcome, TransitionScript

if TYPE_CHECKING:  # the queueing module brings Celery; the store needs only the message's fields
    from worker.queueing import QueuedTask


class TakeOutcome(StrEnum):
    TAKEN = "taken"
    GONE = "gone"  # no such flow, or not in the state the task works on (a duplicate task)
    BUSY = "busy"  # another task owns the flow's work and its lease is alive


@dataclass(frozen=True, slots=True)
class Taken:
    """What `take_work` answers: on TAKEN, the flow as it was taken, its token and the lease's end."""

    outcome: TakeOutcome
    flow: Flow | None = None
    token: str | None = None
    leased_until: float = 0.0


class FlowStore:
    def __init__(self, client: redis.Redis, names: RedisNames, lifetimes: Lifetimes) -> None:
        # Any: redis-py annotates every command as sync-or-async; this store is sync only
        self.redis: Any = client
        self.names = names
        self.lifetimes = lifetimes
        self._apply = TransitionScript(client, names, lifetimes.retention)
        self._take_work = scripts.register(client, "take_work")
        self._take_lapsed = scripts.register(client, "take_lapsed")

    # reading

    def get(self, flow_id: str) -> Flow | None:
        raw = self.redis.hgetall(self.names.flow_state(flow_id))
        if not raw:
            return None
        return Flow.from_hash(flow_id, {_text(k): _text(v) for k, v in raw.items()})

    def token(self, flow_id: str) -> str | None:
        value = self.redis.get(self.names.flow_token(flow_id))
        return _text(value) if value is not None else None

    def events(self, flow_id: str) -> list[dict[str, Any]]:
        entries = self.redis.xrange(self.names.flow_stream(flow_id))
        return [
            json.loads(_text(fields[b"event"] if b"event" in fields else fields["event"]))
            for _, fields in entries
        ]

    def due_deadlines(self, now: float, limit: int = 200) -> list[str]:
        return self._due(self.names.deadlines, now, limit)

    def due_leases(self, now: float, limit: int = 200) -> list[str]:
        return self._due(self.names.leases, now, limit)

    def _due(self, index: str, now: float, limit: int) -> list[str]:
        return [_text(m) for m in self.redis.zrangebyscore(index, "-inf", now, start=0, num=limit)]

    # transitions

    def create(
        self,
        flow_id: str,
        network: str,
        entity_type: str,
        reference: str | None,
        return_url: str | None,
        now: float | None = None,
    ) -> Flow:
        now = time.time() if now is None else now
        deadline = now + self.lifetimes.flow_ttl
        flow = Flow(
            flow_id, FlowState.AWAITING_CALLBACK, network, entity_type, reference, return_url, now, deadline
        )
        event = AuthorizationStarted(**_envelope(flow), data=StartedData(expires_at=utc_timestamp(deadline)))
        fields = {
            "network": network,
            "entity_type": entity_type,
            "reference": reference or "",
            "return_url": return_url or "",
            "created_at": repr(now),
            "deadline": repr(deadline),
        }
        change = Change(fields, live_until=deadline, deadline=deadline)
        transition = self._apply(flow_id, (), FlowState.AWAITING_CALLBACK, event, change)
        if not transition.done:
            raise RuntimeError(f"flow {flow_id} already exists")
        return replace(flow, seq=transition.seq)

    def claim_callback(
        self, flow: Flow, token: str, now: float | None = None, queue: QueuedTask | None = None
    ) -> Transition:
        """awaiting_callback -> verifying, keeping the token for its lifetime; queues `queue` with it, or
        the caller enqueues once it is DONE.

        On CONFLICT, `token_fp` tells a repeat of the same callback (nothing to do) from another token.
        TOKEN_IN_USE: another flow claimed this token. Verifying it again would connect that flow's
        account to this one (Oktopost answers a live token as often as asked), so a token claims one flow.
        """
        now = time.time() if now is None else now
        token_deadline = now + self.lifetimes.token_ttl
        event = CallbackReceived(
            **_envelope(flow), data=CallbackData(token_expires_at=utc_timestamp(token_deadline))
        )
        fields = {
            "token_fp": token_fingerprint(token),
            "token_expires_at": repr(token_deadline),
            "deadline": repr(token_deadline),
            "callback_at": repr(now),
            "owner": "",
        }
        change = Change(
            fields,
            live_until=token_deadline,
            deadline=token_deadline,
            lease=now + self.lifetimes.queued_lease,
            token=token,
            claim_key=self.names.token_claim(token_fingerprint(token)),
            queue=queue,
        )
        return self._apply(flow.flow_id, (FlowState.AWAITING_CALLBACK,), FlowState.VERIFYING, event, change)

    def offer_selection(self, flow: Flow, entities: list[EntityOffer]) -> Transition:
        event = SelectionRequired(**_envelope(flow), data=SelectionRequiredData(entities=entities))
        fields = {"entities": json.dumps([entity.model_dump() for entity in entities])}
        change = Change(fields, live_until=flow.deadline, lease=DROP)
        return self._apply(flow.flow_id, (FlowState.VERIFYING,), FlowState.AWAITING_SELECTION, event, change)

    def submit_selection(
        self, flow: Flow, ids: list[str], now: float | None = None, queue: QueuedTask | None = None
    ) -> Transition:
        """awaiting_selection -> completing; queues `queue` with it, or the caller enqueues once DONE."""
        now = time.time() if now is None else now
        event = SelectionSubmitted(**_envelope(flow), data=SelectionSubmittedData(ids=ids))
        fields = {"selected_ids": json.dumps(ids), "owner": ""}
        change = Change(
            fields, live_until=flow.deadline, lease=now + self.lifetimes.queued_lease, queue=queue
        )
        return self._apply(flow.flow_id, (FlowState.AWAITING_SELECTION,), FlowState.COMPLETING, event, change)

    def complete(self, flow: Flow, credentials: list[ConnectedCredential]) -> Transition:
        event = ConnectionCompleted(**_envelope(flow), data=CompletedData(credentials=credentials))
        return self._finish(flow, WORKING_STATES, FlowState.COMPLETED, event, {})

    def fail(self, flow: Flow, code: str, message: str, retryable: bool, attempts: int) -> Transition:
        data = FailedData(code=code, message=message, retryable=retryable, attempts=attempts)
        event = AuthorizationFailed(**_envelope(flow), data=data)
        return self._finish(flow, LIVE_STATES, FlowState.FAILED, event, {"failure_code": code})

    def expire(self, flow: Flow, now: float | None = None, *, doomed: bool = False) -> Transition:
        """Ends a live flow whose deadline has passed; EARLY when it has not (a callback moved it).

        `doomed` ends it before its deadline: the worker knows no attempt could finish in the time left.
        """
        now = time.time() if now is None else now
        if flow.state.terminal:
            return Transition(TransitionOutcome.CONFLICT, state=flow.state)
        event = AuthorizationExpired(**_envelope(flow), data=ExpiredData(stage=flow.state.stage))  # type: ignore[arg-type]
        fields = {"expired_stage": flow.state.stage}
        return self._finish(flow, (flow.state,), FlowState.EXPIRED, event, fields, None if doomed else now)

    # the work on a flow: one owner at a time, under a lease the sweeper watches

    def take_work(self, flow_id: str, owner: str, state: FlowState) -> Taken:
        """TAKEN when this task may work on the flow: it is in `state` and no live task owns it."""
        now = time.time()
        until = now + self.lifetimes.lease
        answer = self._take_work(
            keys=[self.names.flow_state(flow_id), self.names.leases, self.names.flow_token(flow_id)],
            args=[flow_id, owner, now, until, f",{state.value},"],
        )
        outcome = TakeOutcome(_text(answer[0]))
        if outcome is not TakeOutcome.TAKEN:
            return Taken(outcome)
        flat = [_text(item) for item in answer[1]]
        flow = Flow.from_hash(flow_id, dict(zip(flat[::2], flat[1::2], strict=True)))
        token = _text(answer[2]) if answer[2] is not None else None
        return Taken(outcome, flow, token, until)

    def renew_lease(self, flow_id: str, until: float) -> None:
        """Tells the sweeper this flow's work is alive (only while it still has a lease)."""
        self.redis.zadd(self.names.leases, {flow_id: until}, xx=True)

    def take_lapsed_lease(self, flow_id: str, now: float) -> bool:
        """True for exactly one caller when a flow's queued or running work stopped showing progress."""
        return bool(
            self._take_lapsed(
                keys=[self.names.flow_state(flow_id), self.names.leases],
                args=[flow_id, now, now + self.lifetimes.queued_lease],
            )
        )

    def forget_lease(self, flow_id: str) -> None:
        self.redis.zrem(self.names.leases, flow_id)

    def forget_deadline(self, flow_id: str) -> None:
        self.redis.zrem(self.names.deadlines, flow_id)

    # the end of a flow

    def _finish(
        self,
        flow: Flow,
        allowed: tuple[FlowState, ...],
        state: FlowState,
        event: FlowEvent,
        fields: dict[str, str],
        only_after: float | None = None,
    ) -> Transition:
        change = Change(fields, deadline=DROP, lease=DROP, token=DROP, only_after=only_after)
        return self._apply(flow.flow_id, allowed, state, event, change)


def _envelope(flow: Flow) -> dict[str, Any]:
    return {
        "flow_id": flow.flow_id,
        "network": flow.network,
        "entity_type": flow.entity_type,
        "reference": flow.reference,
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
