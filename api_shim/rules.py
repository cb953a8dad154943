"""What a callback and a selection come to: the rules for claiming a flow with a token, denying it, and
choosing the entities it connects.

The callback rules are plain functions of the flow, the token and the flow store's answer; the callback
route makes the transitions they call for and turns their verdict into a response. A flow is claimed once,
by one token, and a token claims one flow: verifying a token for a second flow would connect the first
flow's account to it (Oktopost answers a live token as often as asked). A selection comes from the
caller's route or from the hosted page; both submit it with `submit_selection`, so whichever comes first
wins and the other is told the flow moved on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from worker.flows.enqueuer import Enqueuer
from worker.flows.flow import Flow, FlowState, is_token, same_fingerprint
from worker.flows.store import FlowStore
from worker.flows.transition import Transition, TransitionOutcome

_REASON_UNSAFE = re.compile(r"[^A-Za-z0-9_. -]")
# A selection with less of the token's life left than this is refused as expired (410): its completion
# could not make its call in time (the task's trip through the broker, then at least
# worker.upstream.retry's min_attempt_seconds for the attempt), so a 202 would promise a completion that
# can only end expired
SELECTION_LEAST_SECONDS = 0.5


class Verdict(StrEnum):
    CLAIMED = "claimed"  # this token claimed the flow: its verification is queued
    REPEATED = "repeated"  # the token that claimed the flow, again: answered as the first time
    DENIED = "denied"  # the user did not authorize: the flow has failed
    CONFLICT = "conflict"  # the flow was already claimed, by another token
    TAKEN = "taken"  # the token already claimed another flow
    EXPIRED = "expired"  # the flow's deadline has passed


def well_formed(token: str) -> bool:
    return is_token(token)


def awaits_callback(flow: Flow) -> bool:
    return flow.state is FlowState.AWAITING_CALLBACK


def came_too_late(flow: Flow, now: float) -> bool:
    """The flow still awaits its callback but its deadline has passed (`now` on Redis's clock): it is to
    be expired, whatever the callback says (the sweeper may not have got to it yet)."""
    return awaits_callback(flow) and flow.seconds_left(now) <= 0


def claim_verdict(flow: Flow, token: str, claim: Transition | None) -> Verdict:
    """What a callback with `token` comes to, given the claim's transition (None when the flow was not
    awaiting its callback, so no claim was tried)."""
    if claim is not None and claim.done:
        return Verdict.CLAIMED
    if claim is not None and claim.outcome is TransitionOutcome.TOKEN_IN_USE:
        return Verdict.TAKEN
    # the claim's answer is the flow as it is now; without a claim, the flow as it was loaded
    fingerprint = claim.token_fp if claim is not None else flow.token_fp
    state = (claim.state if claim is not None else None) or flow.state
    if fingerprint and same_fingerprint(fingerprint, token):
        return Verdict.REPEATED
    if state is FlowState.EXPIRED:
        return Verdict.EXPIRED
    return Verdict.CONFLICT


def denial_verdict(denial: Transition | None, flow: Flow) -> Verdict:
    """What a callback without a token comes to, given the denial's transition (None when the flow was
    not awaiting its callback, so no denial was tried; then `flow` as it was loaded says)."""
    if denial is not None and denial.done:
        return Verdict.DENIED
    state = (denial.state if denial is not None else None) or flow.state
    if state is FlowState.EXPIRED:
        return Verdict.EXPIRED
    if state is FlowState.FAILED:  # a repeat of the callback that denied it
        return Verdict.DENIED
    return Verdict.CONFLICT


def denial_reason(error: str | None) -> str:
    """The `error` Oktopost sent the browser back with, short and plain enough for an event's message."""
    reason = _REASON_UNSAFE.sub("", (error or "no token").strip()[:64])
    return reason or "no token"


def denial_message(error: str | None) -> str:
    return f"the user did not authorize ({denial_reason(error)})"


class SelectionOutcome(StrEnum):
    QUEUED = "queued"  # the flow is completing: its completion is queued
    WRONG_STATE = "wrong_state"  # the flow is not awaiting a selection (another selection came first)
    FLOW_EXPIRED = "flow_expired"
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - an outcome: the okt token ran out before the selection
    NOTHING_SELECTED = "nothing_selected"
    NOT_OFFERED = "not_offered"  # an id the flow did not offer


@dataclass(frozen=True, slots=True)
class Selection:
    outcome: SelectionOutcome
    flow: Flow  # the flow as it is now, as far as the submission saw it
    ids: list[str] = field(default_factory=list)  # QUEUED: the ids, each once; NOT_OFFERED: the unknown ones

    @property
    def queued(self) -> bool:
        return self.outcome is SelectionOutcome.QUEUED


def submit_selection(store: FlowStore, enqueuer: Enqueuer, flow: Flow, ids: list[str]) -> Selection:
    """awaiting_selection -> completing with these ids, and completion queued, when the flow still offers
    them; otherwise the reason it does not."""
    refused = _selection_refused(flow, ids, store.clock.now(), store.token(flow.flow_id) is not None)
    if refused is not None:
        if refused.outcome in _ANSWERED_FROM_STATE:
            store.confirm_read(flow.flow_id)
        return refused
    chosen = list(dict.fromkeys(ids))
    prepared = enqueuer.prepared(flow.flow_id, FlowState.COMPLETING)
    submitted = store.submit_selection(flow, chosen, queue=prepared)
    enqueuer.after_transition(submitted.done, flow.flow_id, FlowState.COMPLETING, prepared)
    if submitted.done:
        return Selection(SelectionOutcome.QUEUED, flow, chosen)
    now = store.get(flow.flow_id) or flow  # another selection, or the expiry, came between
    store.confirm_read(flow.flow_id)
    if now.state is FlowState.EXPIRED:
        return Selection(SelectionOutcome.FLOW_EXPIRED, now)
    return Selection(SelectionOutcome.WRONG_STATE, now)


# refusals that say what state the flow is in: with REDIS_WAIT_REPLICAS, only once the replicas have it
_ANSWERED_FROM_STATE = frozenset(
    {SelectionOutcome.FLOW_EXPIRED, SelectionOutcome.WRONG_STATE, SelectionOutcome.TOKEN_EXPIRED}
)


def _selection_refused(flow: Flow, ids: list[str], now: float, token_alive: bool) -> Selection | None:
    if flow.state is FlowState.EXPIRED:
        return Selection(SelectionOutcome.FLOW_EXPIRED, flow)
    if flow.state is not FlowState.AWAITING_SELECTION:
        return Selection(SelectionOutcome.WRONG_STATE, flow)
    if flow.seconds_left(now) < SELECTION_LEAST_SECONDS or not token_alive:
        return Selection(SelectionOutcome.TOKEN_EXPIRED, flow)
    if not ids:
        return Selection(SelectionOutcome.NOTHING_SELECTED, flow)
    offered = set(flow.offered_ids())
    unknown = [entity_id for entity_id in ids if entity_id not in offered]
    if unknown:
        return Selection(SelectionOutcome.NOT_OFFERED, flow, unknown)
    return None
