"""One transition of a flow: what it changes, and the one Lua call (`scripts/transition.lua`) that makes
it, state, event, stream entry and both publishes together, or none of them."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any

import redis

from worker import scripts
from worker.events import FlowEvent
from worker.flows.flow import FlowState
from worker.keys import RedisNames
from worker.replies import hash_of, text

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the queueing module brings Celery; a transition needs only the message's fields
    from worker.flows.enqueuer import QueuedTask


class TransitionOutcome(StrEnum):
    DONE = "done"
    MISSING = "missing"  # no such flow
    CONFLICT = "conflict"  # the flow is not in a state this transition starts from
    EARLY = "early"  # an expiry before the flow's deadline (a callback moved it)
    TOKEN_IN_USE = "token_in_use"  # noqa: S105 - an outcome: the okt token was claimed by another flow
    FENCED = "fenced"  # the task no longer owns the flow's work: its lease lapsed and another took it up


@dataclass(frozen=True, slots=True)
class Transition:
    outcome: TransitionOutcome
    seq: int = 0  # the event's seq, when DONE
    state: FlowState | None = None  # the new state when DONE, the current one on CONFLICT or FENCED
    token_fp: str = ""  # on CONFLICT: the fingerprint of the token the flow holds

    @property
    def done(self) -> bool:
        return self.outcome is TransitionOutcome.DONE


class Drop(Enum):
    """A transition removes this (the flow's deadline, its lease or its token); None keeps it as it is."""

    DROP = "-"


DROP = Drop.DROP


@dataclass(frozen=True, slots=True)
class Aftermath:
    """What a task does when its transition ends its work, made in the transition's own call, and only if
    the transition is: its answered calls scored by their end in the account's budget window, and its
    metric observations added to the workers' hash."""

    window: str
    waiters: tuple[str, ...]
    metrics_key: str
    metrics: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class Change:
    """What a transition does beside the state change and the event."""

    fields: dict[str, str]
    live_for: float = 0.0  # seconds the flow stays live; its hash and stream outlive that by the retention
    deadline: float | Drop | None = None  # epoch seconds on Redis's clock
    lease: float | Drop | None = None  # seconds from now (Redis's clock) within which work must show progress
    token: str | Drop | None = None  # kept for `live_for`
    only_after_deadline: bool = False  # the transition happens only once the flow's deadline has passed
    fence: str | None = None  # the owner id of the task making the transition (see take_work.lua)
    claim_key: str | None = None
    queue: QueuedTask | None = None
    # a claim's: the flow joins the account's parked flows, when there are any, instead of being queued
    park_behind: str | None = None
    # a completion's: the JSON of the connections it makes (FlowStore._connections_made)
    connections: str | None = None
    after: Aftermath | None = None  # a task's transition: never with a claim


@dataclass(frozen=True, slots=True)
class ReplicaWait:
    """A transition done is confirmed by `replicas` replicas (Redis's WAIT, at most `timeout_ms`) before
    it counts as acknowledged. Unconfirmed, it raises ReplicasUnconfirmed when `refuse` (the shim: the
    request gets 503 and is acknowledged by nothing), else it is logged (a worker's transitions)."""

    replicas: int
    timeout_ms: int
    refuse: bool = True


class ReplicasUnconfirmed(redis.exceptions.TimeoutError):
    """Fewer replicas than asked confirmed a transition in time (a storage outage to the caller: 503)."""


class TransitionScript:
    """`scripts/transition.lua` with typed arguments."""

    def __init__(
        self, client: redis.Redis, names: RedisNames, retention: int, confirm: ReplicaWait | None = None
    ) -> None:
        self._client: Any = client
        self._script = scripts.register(client, "transition")
        self._claim_on_read = scripts.register(client, "callback_claim")
        self.names = names
        self.retention = retention  # seconds a flow's hash and stream are kept after its last change
        self.confirm = confirm if confirm is not None and confirm.replicas > 0 else None

    def __call__(
        self,
        flow_id: str,
        allowed: tuple[FlowState, ...],
        state: FlowState,
        event: FlowEvent,
        change: Change,
        account: str,
    ) -> Transition:
        """`allowed`: the states the flow may be in (none: it must not exist yet); `account`: the Oktopost
        account whose reserved calls the flow counts in."""
        keys, args = self._keys_and_args(
            flow_id, allowed, state, event.to_json(), change, account, event.tenant
        )
        return self._outcome(self._run(self._script, keys, args), flow_id, state)

    def claim_on_read(self, flow_id: str, event: FlowEvent, change: Change, terms: ClaimTerms) -> ReadClaim:
        """A callback's read and claim in one call (`scripts/callback_claim.lua`): awaiting_callback ->
        verifying with `event` and `change` when `terms` allow it, else the flow as read. The event's
        envelope (network, entity_type, reference, tenant) and the names of the flow's account and tenant
        are the flow's own, filled in by the script; `change.park_behind` names the account by MARK."""
        head, tail = _split_envelope(event.to_json())
        keys, args = self._keys_and_args(
            flow_id, (FlowState.AWAITING_CALLBACK,), FlowState.VERIFYING, head, change, MARK, MARK
        )
        own = [
            MARK,
            terms.default_account,
            terms.default_tenant,
            repr(terms.now),
            terms.start_fp,
            listed(terms.tenants_requiring_start),
            terms.browser_fp,
            listed(terms.uis_with_pages),
            tail,
        ]
        answer = self._run(self._claim_on_read, keys, [*own, *args])
        kind = text(answer[0])
        if kind == "missing":
            return ReadClaim(None, None)
        read = hash_of(answer[1])
        if kind == "read":  # what the shim answers from (a repeat's 303, a 409) is confirmed too
            self._confirmed(answer, flow_id)
            return ReadClaim(read, None)
        result = answer[2] if self.confirm is None else [*answer[2], answer[-1]]
        return ReadClaim(read, self._outcome(result, flow_id, FlowState.VERIFYING))

    def _keys_and_args(
        self,
        flow_id: str,
        allowed: tuple[FlowState, ...],
        state: FlowState,
        event: str,
        change: Change,
        account: str,
        tenant: str,
    ) -> tuple[list[str], list[Any]]:
        if change.after is not None and (change.claim_key or change.park_behind):
            raise ValueError("a claim carries no task's aftermath")
        live_for = max(0.0, change.live_for)
        token_ms = max(1, int(live_for * 1000)) if isinstance(change.token, str) else 0
        queue = change.queue
        keys = [
            self.names.flow_state(flow_id),
            self.names.flow_stream(flow_id),
            self.names.deadlines,
            self.names.flow_token(flow_id),
            self.names.leases,
            self.names.account(account).reserved_calls,
            self.names.all_events_stream,
            *([change.claim_key] if change.claim_key else []),
            *([change.park_behind, self.names.parked_accounts] if change.park_behind else []),
            *([change.after.window, change.after.metrics_key] if change.after else []),
        ]
        args = [
            flow_id,
            listed(allowed) if allowed else "",
            state.value,
            event,
            self.names.flow_channel(flow_id),
            self.names.all_events_channel,
            self.retention + int(live_for) + 1,
            _arg(change.deadline),
            _arg(change.lease),
            _arg(change.token),
            token_ms,
            "1" if change.only_after_deadline else "",
            *((queue.queue, queue.message, queue.event_channel, queue.event) if queue else ("",) * 4),
            change.fence or "",
            self.names.tenant_channel(tenant),
            self.retention * 1000,
            change.connections or "",
            self.names.connection_channel(""),
            *_aftermath_args(change.after),
            *(item for pair in change.fields.items() for item in pair),
        ]
        return keys, args

    def _outcome(self, result: Any, flow_id: str, state: FlowState) -> Transition:
        answer = text(result[0])
        outcome = TransitionOutcome(answer if answer != "ok" else "done")
        self._confirmed(result, flow_id, wrote=outcome is TransitionOutcome.DONE)
        if outcome is TransitionOutcome.DONE:
            return Transition(outcome, seq=int(result[1]), state=state)
        if outcome is TransitionOutcome.CONFLICT:
            current = FlowState(text(result[1])) if result[1] else None
            return Transition(outcome, state=current, token_fp=text(result[2]))
        if outcome is TransitionOutcome.FENCED:
            return Transition(outcome, state=FlowState(text(result[1])))
        return Transition(outcome)

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """`script`; with `confirm`, followed on the same connection by WAIT (WAIT counts the replicas that
        have this connection's writes; in the shim a write of the barrier before it comes after every
        write the script saw, its own or another process's): the answer then carries the count, kept for
        `_confirmed`."""
        if self.confirm is None:
            return script(keys=keys, args=args)
        with self._client.pipeline(transaction=False) as pipe:
            script(keys=keys, args=args, client=pipe)
            [result], confirmed = self._with_replicas(pipe, self.confirm)
        return [*result, _Confirmations(confirmed)]

    def confirm_read(self, flow_id: str) -> None:
        """With `confirm`: the replicas have every write this process has seen so far, the flow's state
        as it was read included, or (when refusing) ReplicasUnconfirmed."""
        if self.confirm is None:
            return
        with self._client.pipeline(transaction=False) as pipe:
            _, confirmed = self._with_replicas(pipe, self.confirm)
        self._confirmed([_Confirmations(confirmed)], flow_id)

    def _with_replicas(self, pipe: Any, confirm: ReplicaWait) -> tuple[list[Any], int]:
        """Runs `pipe` with WAIT after what it holds: the answers of what it held, and how many replicas
        have every write up to then. The shim (`refuse`), which answers from states other processes
        wrote too, writes the barrier before the WAIT; a worker logs only its own transitions
        unconfirmed, which WAIT covers without it."""
        if confirm.refuse:
            pipe.incr(self.names.replication_barrier)
        pipe.execute_command("WAIT", confirm.replicas, confirm.timeout_ms)
        *answers, confirmed = pipe.execute()
        return answers[:-1] if confirm.refuse else answers, int(confirmed)

    def _confirmed(self, result: list[Any], flow_id: str, *, wrote: bool = False) -> None:
        """An answer the shim acknowledges or refuses from (a transition made, or the flow as the script
        found it: a repeated callback's 303, a 409) stands only once the replicas have that state: a step
        answered 503 for want of them is still on the primary, and its repeat must not be acknowledged
        before they have it either. A worker's transition unconfirmed is logged."""
        if self.confirm is None or not isinstance(result[-1], _Confirmations):
            return
        if result[-1].count >= self.confirm.replicas:
            return
        message = f"flow {flow_id}: {result[-1].count} of {self.confirm.replicas} replicas confirmed in time"
        if self.confirm.refuse:
            raise ReplicasUnconfirmed(message)
        if wrote:
            log.warning("%s", message)


MARK = "\x00"  # stands for the flow's account or tenant in a name, until callback_claim.lua reads the flow
_ENVELOPE = ',"network":'  # the envelope's flow fields, between the event's `at` and its `data`
_DATA = ',"data":'


@dataclass(frozen=True, slots=True)
class ClaimTerms:
    """What decides, with the flow as read, whether a callback claims it at once (see
    `TransitionScript.claim_on_read`); the same rules the shim applies to a flow it read itself."""

    now: float  # the shim's clock of Redis's time: a flow whose deadline is not after it is not claimed
    default_account: str
    default_tenant: str
    start_fp: str  # the fingerprint of the start cookie the browser presented ("" without one)
    tenants_requiring_start: tuple[str, ...]
    browser_fp: str  # kept by a claimed flow whose browser is led through the shim's pages
    uis_with_pages: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReadClaim:
    """The flow's hash as read (None: no such flow), and the claim's transition when one was tried."""

    read: dict[str, str] | None
    claim: Transition | None


def _split_envelope(event: str) -> tuple[str, str]:
    """An event's JSON cut around its envelope's flow fields: what comes before them (with a trailing
    comma) and from `"data":` on."""
    start, data = event.index(_ENVELOPE), event.index(_DATA)
    return event[: start + 1], event[data + 1 :]


def listed(items: Iterable[str]) -> str:
    """Items as the scripts look them up: ",a,b," (a script finds ",a," in it)."""
    return "," + ",".join(items) + ","


@dataclass(frozen=True, slots=True)
class _Confirmations:
    count: int


def _aftermath_args(after: Aftermath | None) -> list[str | int | float]:
    if after is None:
        return [""]
    args: list[str | int | float] = ["after", len(after.waiters), *after.waiters, len(after.metrics)]
    for name, amount in after.metrics:
        args += [name, repr(amount)]
    return args


def _arg(value: float | str | Drop | None) -> str:
    """The Lua script's encoding of a change: "" keeps, "-" drops, anything else is the new value."""
    if value is None:
        return ""
    if isinstance(value, Drop):
        return value.value
    return value if isinstance(value, str) else repr(value)
