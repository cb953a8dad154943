"""The flow store: a flow's state in Redis and every step it takes, each step one atomic Lua call.

A flow moves   awaiting_callback -> verifying -> (awaiting_selection -> completing ->) completed
and can end as failed or expired from any stage before that. Every step publishes exactly one event;
a step whose expected state no longer holds does nothing, which is what makes redelivered tasks,
repeated callbacks and racing expiry sweeps harmless.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis

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
    SelectionRequired,
    SelectionRequiredData,
    SelectionSubmitted,
    SelectionSubmittedData,
    StartedData,
    _Event,
    utc_timestamp,
)
from worker.keys import RedisNames


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
WORKING_STATES = (FlowState.VERIFYING, FlowState.COMPLETING)

_TRANSITION = Path(__file__).with_name("transition.lua").read_text()
# A flow's work has one owner at a time: the task that took it. Another task for the same flow (a
# redelivery, a requeue by the sweeper) finds the owner's lease alive and leaves the flow alone.
# The task gets the flow and its token with it: one round trip where reading them took two more.
# KEYS: flow hash, leases, token; ARGV: flow id, owner, now, lease until, allowed states ",a,b,"
_TAKE_WORK = """
local current = redis.call("HMGET", KEYS[1], "state", "owner")
if not current[1] or not string.find(ARGV[5], "," .. current[1] .. ",", 1, true) then
  return {"gone"}
end
local score = redis.call("ZSCORE", KEYS[2], ARGV[1])
local owned_by_other = current[2] and current[2] ~= "" and current[2] ~= ARGV[2]
if owned_by_other and score and tonumber(score) > tonumber(ARGV[3]) then
  return {"busy"}
end
redis.call("HSET", KEYS[1], "owner", ARGV[2])
redis.call("ZADD", KEYS[2], ARGV[4], ARGV[1])
return {"taken", redis.call("HGETALL", KEYS[1]), redis.call("GET", KEYS[3])}
"""
# The sweeper's half: a lapsed lease loses its owner, and exactly one sweeper gets to requeue the flow.
# KEYS: flow hash, leases; ARGV: flow id, now, new lease until
_TAKE_LAPSED = """
local score = redis.call("ZSCORE", KEYS[2], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call("ZADD", KEYS[2], ARGV[3], ARGV[1])
  if redis.call("EXISTS", KEYS[1]) == 1 then
    redis.call("HSET", KEYS[1], "owner", "")
  end
  return 1
end
return 0
"""


def token_fingerprint(token: str) -> str:
    """What the flow keeps to recognise a repeated callback without keeping the token in the hash."""
    return hashlib.sha256(token.encode()).hexdigest()


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
            token_expires_at=float(raw["token_expires_at"]) if raw.get("token_expires_at") else None,
            callback_at=float(raw["callback_at"]) if raw.get("callback_at") else None,
            token_fp=raw.get("token_fp", ""),
            entities=json.loads(raw.get("entities") or "[]"),
            selected_ids=json.loads(raw.get("selected_ids") or "[]"),
            seq=int(raw.get("seq", 0)),
        )

    def offered_ids(self) -> list[str]:
        return [str(entity["id"]) for entity in self.entities]

    def seconds_left(self, now: float | None = None) -> float:
        return self.deadline - (time.time() if now is None else now)

    def owns_token(self, token: str) -> bool:
        return bool(self.token_fp) and hmac.compare_digest(self.token_fp, token_fingerprint(token))


class StepOutcome(StrEnum):
    DONE = "done"
    MISSING = "missing"
    CONFLICT = "conflict"
    EARLY = "early"
    TAKEN = "taken"  # the okt token was already claimed by another flow


@dataclass(frozen=True, slots=True)
class Step:
    outcome: StepOutcome
    seq: int = 0
    state: FlowState | None = None
    token_fp: str = ""

    @property
    def done(self) -> bool:
        return self.outcome is StepOutcome.DONE


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """A Celery task message that a step pushes onto the broker list itself (worker/queueing.py)."""

    queue: str  # the broker list (LPUSH)
    message: str
    event_channel: str  # "" when task-sent events are off
    event: str
    task_id: str


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

    @property
    def taken(self) -> bool:
        return self.outcome is TakeOutcome.TAKEN


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """How long flows wait, how long tokens live, how long finished flows are kept."""

    flow_ttl: int = 900
    token_ttl: int = 300
    retention: int = 86400
    lease: float = 75.0  # a running task that shows no progress for this long is taken up again
    queued_lease: float = 150.0  # work queued but not started yet gets this long before a requeue


class FlowStore:
    def __init__(self, client: redis.Redis, names: RedisNames, lifetimes: Lifetimes) -> None:
        # Any: redis-py annotates every command as sync-or-async; this store is sync only
        self.redis: Any = client
        self.names = names
        self.lifetimes = lifetimes
        self._transition = client.register_script(_TRANSITION)
        self._take_work = client.register_script(_TAKE_WORK)
        self._take_lapsed = client.register_script(_TAKE_LAPSED)

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
        return [
            _text(m) for m in self.redis.zrangebyscore(self.names.deadlines, "-inf", now, start=0, num=limit)
        ]

    def due_leases(self, now: float, limit: int = 200) -> list[str]:
        return [
            _text(m) for m in self.redis.zrangebyscore(self.names.leases, "-inf", now, start=0, num=limit)
        ]

    # steps

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
        event = AuthorizationStarted(
            flow_id=flow_id,
            network=network,
            entity_type=entity_type,  # type: ignore[arg-type]
            reference=reference,
            data=StartedData(expires_at=utc_timestamp(deadline)),
        )
        fields = {
            "network": network,
            "entity_type": entity_type,
            "reference": reference or "",
            "return_url": return_url or "",
            "created_at": repr(now),
            "deadline": repr(deadline),
        }
        step = self._step(
            flow_id, "", FlowState.AWAITING_CALLBACK, event, deadline, fields, new_deadline=deadline
        )
        if not step.done:
            raise RuntimeError(f"flow {flow_id} already exists")
        return Flow(
            flow_id=flow_id,
            state=FlowState.AWAITING_CALLBACK,
            network=network,
            entity_type=entity_type,
            reference=reference,
            return_url=return_url,
            created_at=now,
            deadline=deadline,
            seq=step.seq,
        )

    def claim_callback(
        self, flow: Flow, token: str, now: float | None = None, queue: QueuedTask | None = None
    ) -> Step:
        """awaiting_callback -> verifying, keeping the token for its lifetime; queues `queue` with it, or
        the caller enqueues on DONE.

        On CONFLICT, `step.token_fp` tells a repeat of the same callback (nothing to do) from another token.
        TAKEN: another flow claimed this token. Verifying it again would connect that flow's account to
        this one (Oktopost answers a live token as often as asked), so a token claims one flow only.
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
        return self._step(
            flow.flow_id,
            (FlowState.AWAITING_CALLBACK,),
            FlowState.VERIFYING,
            event,
            token_deadline,
            fields,
            new_deadline=token_deadline,
            lease=now + self.lifetimes.queued_lease,
            token=token,
            claim_key=self.names.token_claim(token_fingerprint(token)),
            queue=queue,
        )

    def offer_selection(self, flow: Flow, entities: list[EntityOffer]) -> Step:
        event = SelectionRequired(**_envelope(flow), data=SelectionRequiredData(entities=entities))
        fields = {"entities": json.dumps([entity.model_dump() for entity in entities])}
        return self._step(
            flow.flow_id,
            (FlowState.VERIFYING,),
            FlowState.AWAITING_SELECTION,
            event,
            flow.deadline,
            fields,
            lease="-",
        )

    def submit_selection(
        self, flow: Flow, ids: list[str], now: float | None = None, queue: QueuedTask | None = None
    ) -> Step:
        """awaiting_selection -> completing; queues `queue` with it, or the caller enqueues on DONE."""
        now = time.time() if now is None else now
        event = SelectionSubmitted(**_envelope(flow), data=SelectionSubmittedData(ids=ids))
        return self._step(
            flow.flow_id,
            (FlowState.AWAITING_SELECTION,),
            FlowState.COMPLETING,
            event,
            flow.deadline,
            {"selected_ids": json.dumps(ids), "owner": ""},
            lease=now + self.lifetimes.queued_lease,
            queue=queue,
        )

    def complete(self, flow: Flow, credentials: list[ConnectedCredential]) -> Step:
        event = ConnectionCompleted(**_envelope(flow), data=CompletedData(credentials=credentials))
        return self._finish(flow, WORKING_STATES, FlowState.COMPLETED, event)

    def fail(self, flow: Flow, code: str, message: str, retryable: bool, attempts: int) -> Step:
        event = AuthorizationFailed(
            **_envelope(flow),
            data=FailedData(code=code, message=message, retryable=retryable, attempts=attempts),
        )
        return self._finish(flow, LIVE_STATES, FlowState.FAILED, event, {"failure_code": code})

    def expire(self, flow: Flow, now: float | None = None, *, doomed: bool = False) -> Step:
        """Ends a live flow whose deadline has passed; EARLY when it has not (a callback moved it).

        `doomed` ends it before its deadline: the worker knows no attempt could finish in the time left.
        """
        now = time.time() if now is None else now
        if flow.state.terminal:
            return Step(StepOutcome.CONFLICT, state=flow.state)
        event = AuthorizationExpired(**_envelope(flow), data=ExpiredData(stage=flow.state.stage))  # type: ignore[arg-type]
        only_after = None if doomed else now
        return self._finish(
            flow, (flow.state,), FlowState.EXPIRED, event, {"expired_stage": flow.state.stage}, only_after
        )

    def renew_lease(self, flow_id: str, until: float) -> None:
        """Tells the sweeper this flow's work is alive (only while it still has a lease)."""
        self.redis.zadd(self.names.leases, {flow_id: until}, xx=True)

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

    def take_lapsed_lease(self, flow_id: str, now: float) -> bool:
        """True for exactly one caller when a flow's queued or running work stopped showing progress."""
        return bool(
            self._take_lapsed(
                keys=[self.names.flow_state(flow_id), self.names.leases],
                args=[flow_id, now, now + self.lifetimes.queued_lease],
            )
        )

    def worker_alive(self, name: str, now: float) -> None:
        """A worker is consuming (its sweeper runs only once Celery says the worker is ready)."""
        self.redis.zadd(self.names.workers, {name: now})

    def worker_gone(self, name: str) -> None:
        self.redis.zrem(self.names.workers, name)

    def forget_lease(self, flow_id: str) -> None:
        self.redis.zrem(self.names.leases, flow_id)

    def forget_deadline(self, flow_id: str) -> None:
        self.redis.zrem(self.names.deadlines, flow_id)

    # the one Lua step behind all of them

    def _finish(
        self,
        flow: Flow,
        allowed: tuple[FlowState, ...],
        state: FlowState,
        event: _Event,
        fields: dict[str, str] | None = None,
        only_after: float | None = None,
    ) -> Step:
        return self._step(
            flow.flow_id,
            allowed,
            state,
            event,
            None,
            fields or {},
            new_deadline="-",
            lease="-",
            token="-",  # noqa: S106 - "-" tells the Lua step to delete the token, not a password
            only_after=only_after,
        )

    def _step(
        self,
        flow_id: str,
        allowed: tuple[FlowState, ...] | str,
        state: FlowState,
        event: _Event,
        live_until: float | None,
        fields: dict[str, str],
        *,
        new_deadline: float | str = "",
        lease: float | str = "",
        token: str = "",
        only_after: float | None = None,
        claim_key: str | None = None,
        queue: QueuedTask | None = None,
    ) -> Step:
        now = time.time()
        keep = self.lifetimes.retention + max(0, int((live_until or now) - now) + 1)
        token_ms = max(1, int(((live_until or now) - now) * 1000)) if token not in ("", "-") else 0
        allowed_arg = allowed if isinstance(allowed, str) else "," + ",".join(allowed) + ","
        flat: list[str] = []
        for name, value in fields.items():
            flat += [name, value]
        result = self._transition(
            keys=[
                self.names.flow_state(flow_id),
                self.names.flow_stream(flow_id),
                self.names.deadlines,
                self.names.flow_token(flow_id),
                self.names.leases,
                *([claim_key] if claim_key else []),
            ],
            args=[
                flow_id,
                allowed_arg,
                state.value,
                event.to_json(),
                self.names.flow_channel(flow_id),
                self.names.all_events_channel,
                keep,
                _score(new_deadline),
                _score(lease),
                token,
                token_ms,
                "" if only_after is None else repr(only_after),
                *(
                    (queue.queue, queue.message, queue.event_channel, queue.event)
                    if queue is not None
                    else ("", "", "", "")
                ),
                *flat,
            ],
        )
        outcome = StepOutcome(_text(result[0]) if _text(result[0]) != "ok" else "done")
        if outcome is StepOutcome.DONE:
            return Step(outcome, seq=int(result[1]), state=state)
        if outcome is StepOutcome.CONFLICT:
            return Step(
                outcome, state=FlowState(_text(result[1])) if result[1] else None, token_fp=_text(result[2])
            )
        return Step(outcome)


def _envelope(flow: Flow) -> dict[str, Any]:
    return {
        "flow_id": flow.flow_id,
        "network": flow.network,
        "entity_type": flow.entity_type,
        "reference": flow.reference,
    }


def _score(value: float | str) -> str:
    return value if isinstance(value, str) else repr(value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
