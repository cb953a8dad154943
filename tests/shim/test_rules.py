"""The callback's rules, with no HTTP: what a token or a denial comes to, given the flow and the step."""

from __future__ import annotations

import time

from api_shim import rules
from api_shim.rules import Verdict
from worker.flows.flow import Flow, FlowState, token_fingerprint
from worker.flows.transition import Transition, TransitionOutcome

TOKEN = "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"
OTHER_TOKEN = "6a2d7164e92a89.22689557978380768440c3be3800c22db5a00994"


def _flow(
    state: FlowState = FlowState.AWAITING_CALLBACK, *, token: str = "", deadline_in: float = 60
) -> Flow:
    now = time.time()
    fingerprint = token_fingerprint(token) if token else ""
    return Flow(
        "f" * 40, state, "LinkedIn", "profile", None, None, now, now + deadline_in, token_fp=fingerprint
    )


def test_a_done_claim_is_claimed_and_a_token_of_another_flow_is_taken() -> None:
    assert rules.claim_verdict(_flow(), TOKEN, Transition(TransitionOutcome.DONE)) is Verdict.CLAIMED
    assert rules.claim_verdict(_flow(), TOKEN, Transition(TransitionOutcome.TOKEN_IN_USE)) is Verdict.TAKEN


def test_a_claim_that_lost_a_race_to_the_same_token_is_a_repeat() -> None:
    raced = Transition(
        TransitionOutcome.CONFLICT, state=FlowState.VERIFYING, token_fp=token_fingerprint(TOKEN)
    )
    assert rules.claim_verdict(_flow(), TOKEN, raced) is Verdict.REPEATED
    assert rules.claim_verdict(_flow(), OTHER_TOKEN, raced) is Verdict.CONFLICT


def test_a_claim_that_lost_a_race_to_expiry_is_expired() -> None:
    expired = Transition(TransitionOutcome.CONFLICT, state=FlowState.EXPIRED)
    assert rules.claim_verdict(_flow(), TOKEN, expired) is Verdict.EXPIRED


def test_a_flow_no_longer_awaiting_its_callback_is_judged_as_loaded() -> None:
    verifying = _flow(FlowState.VERIFYING, token=TOKEN)
    assert rules.claim_verdict(verifying, TOKEN, None) is Verdict.REPEATED
    assert rules.claim_verdict(verifying, OTHER_TOKEN, None) is Verdict.CONFLICT
    assert rules.claim_verdict(_flow(FlowState.EXPIRED), TOKEN, None) is Verdict.EXPIRED


def test_only_a_flow_still_awaiting_its_callback_comes_too_late() -> None:
    now = time.time()
    assert rules.came_too_late(_flow(deadline_in=-1), now)
    assert not rules.came_too_late(_flow(deadline_in=60), now)
    assert not rules.came_too_late(_flow(FlowState.VERIFYING, deadline_in=-1), now)


def test_a_denial_of_a_claimed_flow_is_a_conflict_and_of_a_failed_one_a_repeat() -> None:
    assert rules.denial_verdict(None, _flow(FlowState.VERIFYING)) is Verdict.CONFLICT
    assert rules.denial_verdict(None, _flow(FlowState.FAILED)) is Verdict.DENIED
    assert rules.denial_verdict(None, _flow(FlowState.EXPIRED)) is Verdict.EXPIRED


def test_a_denial_that_lost_the_race_to_a_claim_reads_its_own_transition() -> None:
    """The flow was loaded awaiting its callback; a callback with a token claimed it meanwhile."""
    loaded = _flow()
    raced = Transition(TransitionOutcome.CONFLICT, state=FlowState.VERIFYING)
    assert rules.denial_verdict(raced, loaded) is Verdict.CONFLICT
    assert rules.denial_verdict(Transition(TransitionOutcome.DONE), loaded) is Verdict.DENIED


def test_the_reason_of_a_denial_is_short_and_plain() -> None:
    assert rules.denial_reason("access_denied") == "access_denied"
    assert rules.denial_reason(None) == "no token"
    assert rules.denial_reason("<script>") == "script"
    assert rules.denial_reason("<>") == "no token"
    assert len(rules.denial_reason("x" * 500)) == 64


def test_tokens_of_okt_shape_are_well_formed() -> None:
    assert rules.well_formed(TOKEN)
    assert not rules.well_formed("short")
    assert not rules.well_formed("has spaces in it")
    assert not rules.well_formed("x" * 257)
