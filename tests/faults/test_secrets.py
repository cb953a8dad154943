"""Secrets: no okt token, Oktopost API key, Basic-auth value or shim key is written to
a log line of the shim, the worker or the sandbox, to a task's message, to an error body or to an event.

Everything runs at LOG_LEVEL=DEBUG (httpx and httpcore log every request then) with an account and key
of its own, through completions, selections, a denial, refusals and upstream faults of every kind.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.support.fault_report import FaultReport
from tests.support.flows import consent
from tests.support.ledger import (
    ENTITY_KINDS,
    NETWORKS,
    FaultStack,
    Ledger,
    TrackedFlow,
    sandbox_stats,
)
from tests.support.stack import API_KEY, Pipeline, Sandbox

pytestmark = [pytest.mark.faults, pytest.mark.integration]

ACCOUNT = "acct-" + secrets.token_hex(4)
API_SECRET = "okt-key-" + secrets.token_hex(16)
BASIC = base64.b64encode(f"{ACCOUNT}:{API_SECRET}".encode()).decode()
CREDENTIALS = {"OKTOPOST_ACCOUNT_ID": ACCOUNT, "OKTOPOST_API_KEY": API_SECRET}
STACK = FaultStack(
    {"token_ttl_seconds": 20, "oktopost_timeout_seconds": 1, **CREDENTIALS},
    sandbox_flags=("--access-log",),
    sandbox_env=CREDENTIALS,
)


def test_no_secret_reaches_a_log_a_task_an_error_or_an_event(
    stack: tuple[Pipeline, Sandbox], fault_report: FaultReport
) -> None:
    pipeline, sandbox = stack
    assert pipeline.env["LOG_LEVEL"] == "DEBUG"
    ledger = Ledger(pipeline)
    profiles = [ledger.start(network) for network in NETWORKS]
    entities = [ledger.start(network, kind) for network, kind in ENTITY_KINDS[:3]]
    denied = ledger.start("Twitter")
    for flow in profiles + entities:
        ledger.callback(flow)
    queued = [bytes(message) for message in ledger.redis.lrange(f"{pipeline.prefix}.oktopost-connect", 0, -1)]
    assert len(queued) == len(profiles) + len(entities)

    _refuse_every_way(ledger, profiles, denied)
    events, injected = _end_every_flow_through_faults(ledger, sandbox, entities)
    tally = ledger.tally(events)

    tokens = [flow.token for flow in ledger.flows if flow.token]
    secret_values = {"API key": API_SECRET, "Basic value": BASIC, "shim key": API_KEY}
    secret_values.update({f"okt token {i}": token for i, token in enumerate(tokens)})
    places = _every_place_a_secret_could_reach(ledger, sandbox, queued, events)
    leaks = [
        (what, where)
        for what, value in secret_values.items()
        for form in {value, quote(value, safe="")}
        for where, text in places.items()
        if form in text
    ]
    lines = sum(text.count("\n") for name, text in places.items() if name.endswith("log"))
    fault_report.record(
        "6 secrets",
        **tally.figures(),
        faults_injected=injected,
        server_errors=ledger.server_errors,
        log_lines_scanned=lines,
        secrets_checked=len(secret_values),
        leaks=len(leaks),
    )
    ledger.close()

    assert len(tokens) == len(profiles) + len(entities)
    assert lines > 500
    assert "/v2/social-authorization/" in places["worker log"]  # httpx's DEBUG lines were there to scan
    assert leaks == [], leaks
    assert tally.lost == [], tally
    assert tally.duplicated == [], tally
    assert ledger.server_errors == 0


def _refuse_every_way(ledger: Ledger, profiles: list[TrackedFlow], denied: TrackedFlow) -> None:
    """Refusals: a replayed token, a second token, a denial's repeat, bad keys, a token of the wrong shape."""
    pipeline = ledger.pipeline
    ledger.browser.get(profiles[0].callback_url.replace(profiles[0].flow_id, denied.flow_id))
    ledger.browser.get(f"/v1/callback/{profiles[1].flow_id}?okt={profiles[2].token}")
    ledger.browser.get(f"/v1/callback/{profiles[1].flow_id}?okt={profiles[2].token}!")
    httpx.get(f"{pipeline.shim_url}/v1/authorizations/{denied.flow_id}", headers={"Authorization": API_KEY})
    httpx.get(
        f"{pipeline.shim_url}/v1/authorizations/{denied.flow_id}", headers={"Authorization": f"Basic {BASIC}"}
    )
    ledger.browser.get(consent_url(ledger, denied, "deny"))


def _end_every_flow_through_faults(
    ledger: Ledger, sandbox: Sandbox, entities: list[TrackedFlow]
) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """A worker starts under upstream faults of every kind; entities get their selection. Returns each
    flow's events and how many faults the sandbox injected."""
    sandbox.set_faults(
        seed=3,
        error_rate=0.1,
        throttle_rate=0.1,
        timeout_rate=0.05,
        drop_rate=0.1,
        malformed_rate=0.1,
        reject_rate=0.05,
    )
    ledger.pipeline.start_worker(concurrency=8)
    offers = ledger.offers(entities, timeout=25)
    for flow_id, entities_offered in offers.items():
        ledger.caller.post(
            f"/v1/authorizations/{flow_id}/selection", json={"ids": [entities_offered[1]["id"]]}
        )
    events = ledger.outcomes(ledger.flows, timeout=25, settle=0.3)
    injected = sum(sandbox_stats(sandbox)["faults"].values())
    sandbox.set_faults(
        error_rate=0, throttle_rate=0, timeout_rate=0, drop_rate=0, malformed_rate=0, reject_rate=0
    )
    return events, injected


def _every_place_a_secret_could_reach(
    ledger: Ledger, sandbox: Sandbox, queued: list[bytes], events: dict[str, list[dict[str, Any]]]
) -> dict[str, str]:
    """Each process's log, the task messages, the error bodies the callers got, and the events."""
    pipeline = ledger.pipeline
    places = {
        f"{process.name} log": process.output
        for process in [pipeline.shim, *pipeline.workers, sandbox.process]
    }
    places["task messages"] = b"\n".join(queued).decode(errors="replace")
    places["error bodies"] = "\n".join(ledger.error_bodies)
    places["events"] = repr(events)
    return places


def consent_url(ledger: Ledger, flow: TrackedFlow, decision: str) -> str:
    return consent(flow.redirect_url, decision).removeprefix(ledger.pipeline.shim_url)
