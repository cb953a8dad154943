"""What a browser's callback comes to: the rules for claiming a flow with a token, or denying it.

Plain functions of the flow, the token and the flow store's answer; the callback route makes the
transitions they call for and turns their verdict into a response. A flow is claimed once, by one token,
and a token claims one flow: verifying a token for a second flow would connect the first flow's
account to it (Oktopost answers a live token as often as asked).
"""

from __future__ import annotations

import re
from enum import StrEnum

from worker.flow import Flow, FlowState, is_token, same_fingerprint
from worker.transition import Transition, TransitionOutcome

_REASON_UNSAFE = re.compile(r"[^A-Za-z0-9_. -]")


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
