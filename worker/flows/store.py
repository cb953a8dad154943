"""The flow store: flows in Redis, and every transition a flow makes, each one atomic Lua call.

Every transition publishes exactly one event; a transition whose expected state no longer holds does
nothing, which is what makes redelivered tasks, repeated callbacks and racing expiry sweeps harmless.
The Lua script (`scripts/transition.lua`) changes the state, gives the event its `seq`, appends it to
the flow's stream and publishes it on both channels, or does none of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import redis

from worker import scripts
from worker.clock import Clock, RedisClock
from worker.config.tenants import DEFAULT_ACCOUNT_ID, DEFAULT_TENANT
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
    ExpiredReason,
    FailedData,
    FlowEvent,
    SelectionRequired,
    SelectionRequiredData,
    SelectionSubmitted,
    SelectionSubmittedData,
    StartedData,
    new_event_id,
    utc_timestamp,
)
from worker.flows.flow import WORKING_STATES, BrowserUI, Flow, FlowState, Lifetimes, token_fingerprint
from worker.flows.transition import (
    DROP,
    MARK,
    Aftermath,
    Change,
    ClaimTerms,
    ReplicaWait,
    Transition,
    TransitionOutcome,
    TransitionScript,
    listed,
)
from worker.keys import AccountNames, RedisNames
from worker.observing import tracing
from worker.replies import hash_of, text

if TYPE_CHECKING:  # the queueing module brings Celery; the store needs only the message's fields
    from worker.flows.enqueuer import QueuedTask


_UIS_WITH_PAGES = tuple(ui.value for ui in BrowserUI if ui.pages)


class TakeOutcome(StrEnum):
    TAKEN = "taken"
    GONE = "gone"  # no such flow, or not in the state the task works on (a duplicate task)
    BUSY = "busy"  # another task owns the flow's work and its lease is alive


@dataclass(frozen=True, slots=True)
class Taken:
    """What `take_work` answers: on TAKEN, the flow as it was taken, its token and the lease's end."""

    outcome: TakeOutcome
    flow: Flow | None = None
    token: str | None = field(default=None, repr=False)  # error reporters print reprs: never the token
    leased_until: float = 0.0
    asked: Any = None  # the answer to the `BudgetAsk` made with the take, None when none was made


def taken(flow_id: str, answer: Any) -> Taken:
    """take_work.lua's answer, read."""
    outcome = TakeOutcome(text(answer[0]))
    if outcome is not TakeOutcome.TAKEN:
        return Taken(outcome)
    flow = Flow.from_hash(flow_id, hash_of(answer[1]))
    token = text(answer[2]) if answer[2] else None
    asked = answer[4] if len(answer) > 4 else None
    return Taken(outcome, flow, token, float(text(answer[3])), asked)


class SentTake:
    """A take sent and not read yet (`FlowStore.send_take`)."""

    def __init__(self, flow_id: str, sent: scripts.Sent) -> None:
        self.flow_id = flow_id
        self._sent = sent

    def taken(self) -> Taken:
        return taken(self.flow_id, self._sent.answer())


@dataclass(frozen=True, slots=True)
class BudgetAsk:
    """An ask of an Oktopost account's upstream budget, made by `take_work` in its own call when the flow
    taken is of that account and has its token (its first call asks next in any case). Built and read by
    worker.upstream.budget; the flow's deadline, less `give_up_before`, and its parking slot fill in the
    rest (see take_work.lua)."""

    account: str
    keys: tuple[str, ...]
    args: tuple[float | str, ...]
    give_up_before: float


class StartBinding(StrEnum):
    BOUND = "bound"  # this browser's cookie is the flow's now
    TAKEN = "taken"  # a browser was bound before (this one, again, or another)
    NOT_WAITING = "not_waiting"  # no such flow, or it is past awaiting its callback


class RequeueOutcome(StrEnum):
    ALIVE = "alive"  # the lease has not lapsed
    FORGOTTEN = "forgotten"  # no work left on the flow: its lease was dropped
    MOVED = "moved"  # the flow is in another working state than the one asked about
    REQUEUED = "requeued"


class FlowStore:
    def __init__(
        self,
        client: redis.Redis,
        names: RedisNames,
        lifetimes: Lifetimes,
        clock: Clock | None = None,
        *,
        default_account: str = DEFAULT_ACCOUNT_ID,
        confirm: ReplicaWait | None = None,
    ) -> None:
        """`default_account`: the Oktopost account of flows that name none (stored before tenants);
        `confirm`: how many replicas confirm each transition done (REDIS_WAIT_REPLICAS)."""
        # Any: redis-py annotates every command as sync-or-async; this store is sync only
        self.redis: Any = client
        self.names = names
        self.lifetimes = lifetimes
        self.clock: Clock = clock or RedisClock(client)
        self.default_account = default_account
        self._transition = TransitionScript(client, names, lifetimes.retention, confirm)
        self._take_work = scripts.register(client, "take_work")
        self._requeue_lapsed = scripts.register(client, "requeue_lapsed")
        self._renew_leases = scripts.register(client, "renew_leases")
        self._park = scripts.register(client, "park_flow")
        self._bind_start = scripts.register(client, "start_bind")
        self._hand_back = scripts.register(client, "hand_back")

    # reading

    def get(self, flow_id: str) -> Flow | None:
        raw = self.redis.hgetall(self.names.flow_state(flow_id))
        if not raw:
            return None
        return Flow.from_hash(flow_id, {text(k): text(v) for k, v in raw.items()})

    def token(self, flow_id: str) -> str | None:
        value = self.redis.get(self.names.flow_token(flow_id))
        return text(value) if value is not None else None

    def events(self, flow_id: str) -> list[dict[str, Any]]:
        entries = self.redis.xrange(self.names.flow_stream(flow_id))
        return [
            json.loads(text(fields[b"event"] if b"event" in fields else fields["event"]))
            for _, fields in entries
        ]

    def due_deadlines(self, now: float, limit: int = 200) -> list[str]:
        return self._due(self.names.deadlines, now, limit)

    def due_leases(self, now: float, limit: int = 200) -> list[str]:
        return self._due(self.names.leases, now, limit)

    def _due(self, index: str, now: float, limit: int) -> list[str]:
        return [text(m) for m in self.redis.zrangebyscore(index, "-inf", now, start=0, num=limit)]

    def account_of(self, flow: Flow) -> str:
        """The Oktopost account the flow's calls are made for and counted against."""
        return flow.account or self.default_account

    # transitions made for callers and browsers (the shim), and by the sweeper

    def create(
        self,
        flow_id: str,
        network: str,
        entity_type: str,
        reference: str | None,
        return_url: str | None,
        ui: BrowserUI = BrowserUI.HOSTED,
        tenant: str = DEFAULT_TENANT,
        account: str | None = None,
        caller_state: str | None = None,
        redirect_url: str = "",
        reconnects: str | None = None,
        locale: str = "",
    ) -> Flow:
        """A new flow of `tenant`, whose calls use Oktopost `account` (default: the store's);
        `caller_state`: the caller's `state`, echoed in authorization.started and on return_url;
        `redirect_url`: Oktopost's consent page, where the flow's start_url leads;
        `reconnects`: the connection it connects again (POST /v1/connections/{id}/reconnect);
        `locale`: the language its hosted pages speak ("": the browser's)."""
        now = self.clock.now()
        ttl = self.lifetimes.flow_ttl
        flow = Flow(
            flow_id,
            FlowState.AWAITING_CALLBACK,
            network,
            entity_type,
            reference,
            return_url,
            now,
            now + ttl,
            ui=ui,
            tenant=tenant,
            account=account or self.default_account,
            caller_state=caller_state,
            redirect_url=redirect_url,
            reconnects=reconnects,
            locale=locale,
        )
        data = StartedData(expires_at=utc_timestamp(flow.deadline), state=caller_state, reconnects=reconnects)
        event = AuthorizationStarted(**_envelope(flow, now), data=data)
        fields = {
            "network": network,
            "entity_type": entity_type,
            "reference": reference or "",
            "return_url": return_url or "",
            "created_at": repr(now),
            "deadline": repr(flow.deadline),
            "ui": ui.value,
            "tenant": flow.tenant,
            "account": flow.account,
            "caller_state": caller_state or "",
            "redirect_url": redirect_url,
            **({"reconnects": reconnects} if reconnects else {}),
            "locale": locale,
        }
        if traceparent := tracing.current_traceparent():  # the flow's trace: its later spans join it
            fields["traceparent"] = traceparent
            flow = replace(flow, traceparent=traceparent)
        change = Change(fields, live_for=ttl, deadline=flow.deadline)
        transition = self._apply(flow, (), FlowState.AWAITING_CALLBACK, event, change)
        if not transition.done:
            raise RuntimeError(f"flow {flow_id} already exists")
        return replace(flow, seq=transition.seq)

    def claim_callback(
        self, flow: Flow, token: str, queue: QueuedTask | None = None, browser_fp: str = ""
    ) -> Transition:
        """awaiting_callback -> verifying, keeping the token for its lifetime; queues `queue` with it, or
        the caller enqueues once it is DONE. `browser_fp`: the hash of the cookie the browser is given,
        kept only when this claim is the one that happens.

        When the flow's account already has flows parked for its budget, the flow joins them instead of
        being queued (worker.upstream.parking): its task would only park it, and a burst of callbacks
        would fill the broker ahead of other accounts' flows.
        On CONFLICT, `token_fp` tells a repeat of the same callback (nothing to do) from another token.
        TOKEN_IN_USE: another flow claimed this token. Verifying it again would connect that flow's
        account to this one (Oktopost answers a live token as often as asked), so a token claims one flow.
        """
        now = self.clock.now()
        account = self.account_of(flow)
        event, change = self._claim(_envelope(flow, now), now, token, queue, browser_fp, account)
        return self._apply(flow, (FlowState.AWAITING_CALLBACK,), FlowState.VERIFYING, event, change)

    def claim_on_read(
        self,
        flow_id: str,
        token: str,
        queue: QueuedTask | None,
        *,
        browser_fp: str,
        start_fp: str,
        tenants_requiring_start: tuple[str, ...],
    ) -> tuple[Flow | None, Transition | None]:
        """A callback's read and claim in one call: the flow as read (None: no such flow) and, when it
        awaits its callback, in time, and needs no confirmation (the browser presents the start cookie
        of fingerprint `start_fp` the flow is bound to, or it is bound to none and its tenant is not in
        `tenants_requiring_start`), the claim's transition, as `claim_callback` makes it (`browser_fp`
        kept only for a flow led through the shim's pages). Otherwise nothing is changed and the
        transition is None: the caller decides on the flow as read."""
        now = self.clock.now()
        envelope = {"at": utc_timestamp(now), "flow_id": flow_id, "network": "", "entity_type": "profile"}
        event, change = self._claim(envelope, now, token, queue, "", MARK)
        terms = ClaimTerms(
            now=now,
            default_account=self.default_account,
            default_tenant=DEFAULT_TENANT,
            start_fp=start_fp,
            tenants_requiring_start=tenants_requiring_start,
            browser_fp=browser_fp,
            uis_with_pages=_UIS_WITH_PAGES,
        )
        answer = self._transition.claim_on_read(flow_id, event, change, terms)
        flow = Flow.from_hash(flow_id, answer.read) if answer.read is not None else None
        return flow, answer.claim

    def _claim(
        self,
        envelope: dict[str, Any],
        now: float,
        token: str,
        queue: QueuedTask | None,
        browser_fp: str,
        account: str,
    ) -> tuple[CallbackReceived, Change]:
        """A claim's event and change: the token kept for its lifetime and indexed by its fingerprint,
        the flow's deadline moved to the token's end, its task queued (or the flow parked behind its
        account's parked flows)."""
        ttl = self.lifetimes.token_ttl
        fingerprint = token_fingerprint(token)
        data = CallbackData(token_expires_at=utc_timestamp(now + ttl))
        event = CallbackReceived(**envelope, data=data)
        fields = {
            "token_fp": fingerprint,
            "token_expires_at": repr(now + ttl),
            "deadline": repr(now + ttl),
            "callback_at": repr(now),
            "owner": "",
            **({"browser_fp": browser_fp} if browser_fp else {}),
        }
        change = Change(
            fields,
            live_for=ttl,
            deadline=now + ttl,
            lease=self.lifetimes.queued_lease,
            token=token,
            claim_key=self.names.token_claim(fingerprint),
            queue=queue,
            park_behind=self.names.account(account).parked_flows,
        )
        return event, change

    def deny(self, flow: Flow, message: str, browser_fp: str = "") -> Transition:
        """awaiting_callback -> failed (authorization_denied): the user came back without a token. Only
        from awaiting_callback: a callback with a token that got there first wins. `browser_fp` as for
        claim_callback: the browser that came back may still see the flow's page."""
        extra = {"browser_fp": browser_fp} if browser_fp else {}
        return self._fail(
            flow, (FlowState.AWAITING_CALLBACK,), "authorization_denied", message, 0, None, extra
        )

    def bind_start(self, flow_id: str, fingerprint: str) -> StartBinding:
        """Binds a flow awaiting its callback to the browser that opened its start_url: the flow keeps
        `fingerprint`, the hash of that browser's cookie, unless a browser was bound before."""
        answer = self._bind_start(keys=[self.names.flow_state(flow_id)], args=[fingerprint])
        return StartBinding(text(answer))

    def confirm_read(self, flow_id: str) -> None:
        """Before a refusal is answered from a flow as read (a 409, a 410): with `confirm`, the replicas
        have that state (a step answered 503 for want of them may still be on the primary alone), else
        ReplicasUnconfirmed."""
        self._transition.confirm_read(flow_id)

    def submit_selection(self, flow: Flow, ids: list[str], queue: QueuedTask | None = None) -> Transition:
        """awaiting_selection -> completing; queues `queue` with it, or the caller enqueues once DONE."""
        now = self.clock.now()
        event = SelectionSubmitted(**_envelope(flow, now), data=SelectionSubmittedData(ids=ids))
        fields = {"selected_ids": json.dumps(ids), "owner": ""}
        change = Change(fields, live_for=flow.deadline - now, lease=self.lifetimes.queued_lease, queue=queue)
        return self._apply(flow, (FlowState.AWAITING_SELECTION,), FlowState.COMPLETING, event, change)

    def expire(self, flow: Flow) -> Transition:
        """Ends a live flow whose deadline has passed (on Redis's clock); EARLY when it has not (a
        callback moved it)."""
        return self._expire(flow, only_after_deadline=True, fence=None)

    def expire_blocked(self, flow: Flow) -> Transition:
        """Ends a flow at once, before its deadline, because the account's pause outlives it; from the
        state the flow was read in only, so a callback or a selection that moved it meanwhile wins."""
        return self._expire(flow, only_after_deadline=False, fence=None, reason="upstream_blocked")

    def expire_unserved(self, flow: Flow, reason: ExpiredReason | None) -> Transition:
        """Ends a parked flow at once, before its deadline, because no budget slot can come for it in time
        (`upstream_blocked`: its account's pause or day's limit outlives it); from the state it was read
        in, by no task (a parked flow has none)."""
        return self._expire(flow, only_after_deadline=False, fence=None, reason=reason)

    def fail_unclaimed(self, flow: Flow, code: str, message: str) -> Transition:
        """Fails a flow whose work no task holds (a parked one), from the state it was read in."""
        return self._fail(flow, (flow.state,), code, message, 0, None)

    # transitions made by the task that owns the flow's work: fenced with its owner id

    def offer_selection(
        self,
        flow: Flow,
        entities: list[EntityOffer],
        owner: str,
        after: Aftermath | None = None,
        token: str | None = None,
    ) -> Transition:
        """`token`: the one verify's answer gave for the next step (the completion), kept in place of the
        callback's when it is another."""
        now = self.clock.now()
        event = SelectionRequired(**_envelope(flow, now), data=SelectionRequiredData(entities=entities))
        fields = {"entities": json.dumps([entity.model_dump() for entity in entities])}
        change = Change(
            fields, live_for=flow.deadline - now, lease=DROP, token=token, fence=owner, after=after
        )
        return self._apply(flow, (FlowState.VERIFYING,), FlowState.AWAITING_SELECTION, event, change)

    # `after`: the task's aftermath (its answered calls' ends, its metrics), made only with the transition

    def complete(
        self, flow: Flow, credentials: list[ConnectedCredential], owner: str, after: Aftermath | None = None
    ) -> Transition:
        """Ends the flow `completed`; in the same step its credentials become connections of its tenant
        (scripts/connection_record.lua), so no completed flow can leave a credential unknown."""
        event = ConnectionCompleted(
            **_envelope(flow, self.clock.now()), data=CompletedData(credentials=credentials)
        )
        made = self._connections_made(flow, event)
        change = Change({}, deadline=DROP, lease=DROP, token=DROP, fence=owner, connections=made, after=after)
        return self._apply(flow, WORKING_STATES, FlowState.COMPLETED, event, change)

    def _connections_made(self, flow: Flow, event: ConnectionCompleted) -> str:
        account, names = self.account_of(flow), self.names
        credentials = [
            {
                "id": credential.id,
                "name": credential.name,
                "status": credential.status,
                "network": credential.network,
                "display_name": credential.display_name,
                "event_id": new_event_id(),
            }
            for credential in event.data.credentials
        ]
        return json.dumps(
            {
                "tenant": flow.tenant,
                "account": account,
                "flow_id": flow.flow_id,
                "reference": flow.reference,
                "entity_type": flow.entity_type,
                "at": event.at,
                "hash": names.tenant_connections(flow.tenant),
                "order": names.tenant_connection_order(flow.tenant),
                "account_set": names.account(account).connections,
                "accounts": names.connection_accounts,
                "counts": names.connection_counts,
                "deleting": names.connections_deleting,
                "credentials": credentials,
            }
        )

    def fail(
        self, flow: Flow, code: str, message: str, attempts: int, owner: str, after: Aftermath | None = None
    ) -> Transition:
        return self._fail(flow, WORKING_STATES, code, message, attempts, owner, after=after)

    def give_up(
        self, flow: Flow, owner: str, reason: ExpiredReason | None = None, after: Aftermath | None = None
    ) -> Transition:
        """Ends the flow as expired before its deadline: no attempt could finish in the time left
        (`reason` upstream_blocked: Oktopost's block of the account outlives it)."""
        return self._expire(flow, only_after_deadline=False, fence=owner, reason=reason, after=after)

    # the work on a flow: one owner at a time, under a lease the sweeper watches

    def take_work(self, flow_id: str, owner: str, state: FlowState, ask: BudgetAsk | None = None) -> Taken:
        """TAKEN when this task may work on the flow: it is in `state` and no live task owns it. `owner`
        becomes the fence of the task's transitions. With `ask`, a taken flow of that account with its
        token asks the budget in the same call (`Taken.asked`)."""
        return taken(flow_id, self._take_work(*self._take_call(flow_id, owner, state, ask)))

    def send_take(self, flow_id: str, owner: str, state: FlowState, ask: BudgetAsk | None = None) -> SentTake:
        """`take_work` sent now, its answer read with `SentTake.taken()` (by another thread, say)."""
        return SentTake(flow_id, self._take_work.send(*self._take_call(flow_id, owner, state, ask)))

    def _take_call(
        self, flow_id: str, owner: str, state: FlowState, ask: BudgetAsk | None
    ) -> tuple[list[str], list[float | str]]:
        keys = [self.names.flow_state(flow_id), self.names.leases, self.names.flow_token(flow_id)]
        args: list[float | str] = [flow_id, owner, self.lifetimes.lease, f",{state.value},"]
        if ask is not None:
            keys += ask.keys
            args += [ask.account, self.default_account, ask.give_up_before, *ask.args]
        return keys, args

    def renew_leases(self, held: dict[str, str]) -> set[str]:
        """Renews the lease of each flow (id -> owner) its owner still owns; returns the flows it lost."""
        if not held:
            return set()
        flow_ids = list(held)
        lost = self._renew_leases(
            keys=[self.names.leases, *(self.names.flow_state(flow_id) for flow_id in flow_ids)],
            args=[self.lifetimes.lease, *(item for flow_id in flow_ids for item in (flow_id, held[flow_id]))],
        )
        return {text(flow_id) for flow_id in lost}

    def requeue_lapsed(self, flow_id: str, state: FlowState, queue: QueuedTask | None) -> RequeueOutcome:
        """Takes up a flow in `state` whose work stopped showing progress: the lapsed owner is fenced
        out, the lease moves ahead and `queue` is pushed, in one step (see requeue_lapsed.lua)."""
        working = listed(WORKING_STATES)
        message = (queue.queue, queue.message, queue.event_channel, queue.event) if queue else ("",) * 4
        answer = self._requeue_lapsed(
            keys=[self.names.flow_state(flow_id), self.names.leases],
            args=[flow_id, state.value, self.lifetimes.queued_lease, working, *message],
        )
        return RequeueOutcome(text(answer))

    def park(self, flow: Flow, owner: str, account: AccountNames, waiter: str, wait: float) -> bool:
        """Gives the flow's work up to wait for its account's budget without a thread (see
        park_flow.lua); False when `owner` no longer holds it."""
        names = self.names
        answer = self._park(
            keys=[
                names.flow_state(flow.flow_id),
                names.leases,
                account.parked_flows,
                names.parked_accounts,
                account.budget_queue,
                account.budget_alive,
                account.budget_window,
                account.early_slots,
            ],
            args=[flow.flow_id, owner, flow.state.value, waiter, wait],
        )
        return text(answer) == "parked"

    def hand_back(self, flow_id: str, owner: str) -> bool:
        """A stopping worker gives up a flow it holds (`owner` "": received, not started): its owner is
        fenced out and the lease lapses now, for `requeue_lapsed` (see hand_back.lua)."""
        working = listed(WORKING_STATES)
        answer = self._hand_back(
            keys=[self.names.flow_state(flow_id), self.names.leases], args=[flow_id, owner, working]
        )
        return bool(answer)

    def untaken(self, flow_id: str) -> bool:
        """Whether the flow waits for a task to take its work: in a working state with no owner (queued,
        or handed back), not taken by any task yet."""
        state, owner = self.redis.hmget(self.names.flow_state(flow_id), "state", "owner")
        working = state is not None and text(state) in WORKING_STATES
        return working and not (owner and text(owner))

    def lapse_lease(self, flow_id: str) -> None:
        """The lease ends now, so the next sweep takes the flow up again (a requeue that was not sent)."""
        self.redis.zadd(self.names.leases, {flow_id: 0}, xx=True)

    def forget_deadline(self, flow_id: str) -> None:
        self.redis.zrem(self.names.deadlines, flow_id)

    # the end of a flow

    def _fail(
        self,
        flow: Flow,
        allowed: tuple[FlowState, ...],
        code: str,
        message: str,
        attempts: int,
        fence: str | None,
        extra: dict[str, str] | None = None,
        after: Aftermath | None = None,
    ) -> Transition:
        data = FailedData(code=code, message=message, retryable=False, attempts=attempts)
        event = AuthorizationFailed(**_envelope(flow, self.clock.now()), data=data)
        fields = {"failure_code": code, **(extra or {})}
        return self._finish(flow, allowed, FlowState.FAILED, event, fields, fence=fence, after=after)

    def _expire(
        self,
        flow: Flow,
        *,
        only_after_deadline: bool,
        fence: str | None,
        reason: ExpiredReason | None = None,
        after: Aftermath | None = None,
    ) -> Transition:
        if flow.state.terminal:
            return Transition(TransitionOutcome.CONFLICT, state=flow.state)
        data = ExpiredData(stage=flow.state.stage, reason=reason)  # type: ignore[arg-type]
        event = AuthorizationExpired(**_envelope(flow, self.clock.now()), data=data)
        fields = {"expired_stage": flow.state.stage}
        change = Change(
            fields,
            deadline=DROP,
            lease=DROP,
            token=DROP,
            only_after_deadline=only_after_deadline,
            fence=fence,
            after=after,
        )
        return self._apply(flow, (flow.state,), FlowState.EXPIRED, event, change)

    def _finish(
        self,
        flow: Flow,
        allowed: tuple[FlowState, ...],
        state: FlowState,
        event: FlowEvent,
        fields: dict[str, str],
        fence: str | None,
        after: Aftermath | None = None,
    ) -> Transition:
        change = Change(fields, deadline=DROP, lease=DROP, token=DROP, fence=fence, after=after)
        return self._apply(flow, allowed, state, event, change)

    def _apply(
        self, flow: Flow, allowed: tuple[FlowState, ...], state: FlowState, event: FlowEvent, change: Change
    ) -> Transition:
        return self._transition(flow.flow_id, allowed, state, event, change, self.account_of(flow))


def _envelope(flow: Flow, now: float) -> dict[str, Any]:
    return {
        "at": utc_timestamp(now),
        "flow_id": flow.flow_id,
        "network": flow.network,
        "entity_type": flow.entity_type,
        "reference": flow.reference,
        "tenant": flow.tenant,
    }
