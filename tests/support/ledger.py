"""Flows driven over real HTTP under faults, and what became of each: its events, the shim's 5xx answers.

A `Ledger` plays the caller service (Bearer key) and the user's browser (consent, callback) for many
flows at once, then reads every flow's event stream until each has its terminal event.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import redis

from tests.support.flows import consent, okt_of
from tests.support.stack import RETURN_URL, Pipeline, Sandbox, start_pipeline, start_sandbox
from worker.events import TERMINAL_TYPES
from worker.keys import RedisNames

# (network, type) pairs whose entities are connected to no other pair's credential in the sandbox
ENTITY_KINDS = [
    ("Facebook", "page"),
    ("LinkedIn", "page"),
    ("Twitter", "group"),
    ("YouTube", "group"),
    ("Instagram", "page"),
    ("Facebook", "group"),
    ("LinkedIn", "group"),
    ("Twitter", "page"),
    ("YouTube", "page"),
    ("Instagram", "group"),
]
NETWORKS = ["Twitter", "Facebook", "LinkedIn", "YouTube", "Instagram"]


def epoch(timestamp: str) -> float:
    """An event's `at` ("2026-11-28T14:00:00.123Z") as epoch seconds."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


@dataclass
class TrackedFlow:
    flow_id: str
    network: str
    entity_type: str
    redirect_url: str
    expires_at: float
    callback_url: str = ""
    token: str = ""
    chosen: list[str] = field(default_factory=list)


@dataclass
class Tally:
    """What became of a set of flows."""

    flows: int
    lost: list[str]  # no terminal event in time
    duplicated: list[str]  # more than one terminal event, or anything after it
    by_outcome: Counter[str]  # "connection.completed", "authorization.failed:token_invalid", ...

    def figures(self) -> dict[str, int]:
        """The fault report's figures for these flows (FaultReport.record)."""
        return {"flows": self.flows, "lost": len(self.lost), "duplicated_terminal": len(self.duplicated)}


def describe(event: dict[str, Any]) -> str:
    if event["type"] == "authorization.failed":
        return f"authorization.failed:{event['data']['code']}"
    if event["type"] == "authorization.expired":
        return f"authorization.expired:{event['data']['stage']}"
    return str(event["type"])


class Ledger:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.names = RedisNames(pipeline.prefix)
        self.redis: Any = pipeline.redis()  # redis-py types every reply as sync-or-async
        self.flows: list[TrackedFlow] = []
        self.statuses: Counter[int] = Counter()
        self.error_bodies: list[str] = []
        hooks = {"response": [self._seen]}
        self.caller = httpx.Client(
            base_url=pipeline.shim_url, headers=pipeline.headers, timeout=15, event_hooks=hooks
        )
        self.browser = httpx.Client(base_url=pipeline.shim_url, timeout=5, event_hooks=hooks)

    def close(self) -> None:
        self.caller.close()
        self.browser.close()
        self.redis.close()

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    def _seen(self, response: httpx.Response) -> None:
        self.statuses[response.status_code] += 1
        if response.status_code >= 400:
            response.read()
            self.error_bodies.append(response.text)

    # driving

    def start(
        self, network: str = "LinkedIn", entity_type: str = "profile", return_url: str | None = RETURN_URL
    ) -> TrackedFlow:
        body: dict[str, Any] = {"network": network, "type": entity_type, "reference": "fault-suite"}
        if return_url is not None:
            body["return_url"] = return_url
        response = self.caller.post("/v1/authorizations", json=body)
        assert response.status_code == 201, response.text
        created = response.json()
        flow = TrackedFlow(
            created["flow_id"], network, entity_type, created["redirect_url"], epoch(created["expires_at"])
        )
        self.flows.append(flow)
        return flow

    def consent(self, flow: TrackedFlow) -> str:
        flow.callback_url = consent(flow.redirect_url)
        flow.token = okt_of(flow.callback_url)
        return flow.callback_url

    def callback(self, flow: TrackedFlow) -> httpx.Response:
        if not flow.callback_url:
            self.consent(flow)
        response = self.browser.get(flow.callback_url.removeprefix(self.pipeline.shim_url))
        assert response.status_code == 303, response.text
        return response

    def select(self, flow: TrackedFlow, ids: list[str]) -> httpx.Response:
        response = self.caller.post(f"/v1/authorizations/{flow.flow_id}/selection", json={"ids": ids})
        assert response.status_code == 202, response.text
        flow.chosen = ids
        return response

    # reading

    def events(self, flows: list[TrackedFlow]) -> dict[str, list[dict[str, Any]]]:
        # a Redis just restarted answers LOADING until its AOF is read: we only look, so we wait
        deadline = time.monotonic() + 30
        while True:
            pipe = self.redis.pipeline(transaction=False)
            for flow in flows:
                pipe.xrange(self.names.flow_stream(flow.flow_id))
            try:
                streams = pipe.execute()
                break
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return {
            flow.flow_id: [json.loads(fields[b"event"]) for _, fields in entries]
            for flow, entries in zip(flows, streams, strict=True)
        }

    def wait_for(
        self, flows: list[TrackedFlow], event_type: str, timeout: float = 30
    ) -> dict[str, dict[str, Any]]:
        """Each flow's first event of this type; fails when one has none in time."""
        deadline = time.monotonic() + timeout
        while True:
            found = {
                flow_id: next((e for e in events if e["type"] == event_type), None)
                for flow_id, events in self.events(flows).items()
            }
            if all(found.values()):
                return {flow_id: event for flow_id, event in found.items() if event is not None}
            if time.monotonic() > deadline:
                missing = [flow_id for flow_id, event in found.items() if event is None]
                raise AssertionError(f"no {event_type} within {timeout}s for {missing}")
            time.sleep(0.1)

    def offers(self, flows: list[TrackedFlow], timeout: float = 30) -> dict[str, list[dict[str, Any]]]:
        """The entities offered to each flow that got that far; flows that ended first are left out."""
        offers: dict[str, list[dict[str, Any]]] = {}
        pending = list(flows)
        deadline = time.monotonic() + timeout
        while pending:
            for flow_id, events in self.events(pending).items():
                offered = [e for e in events if e["type"] == "selection.required"]
                if offered:
                    offers[flow_id] = offered[0]["data"]["entities"]
                if offered or _terminal_count(events):
                    pending = [flow for flow in pending if flow.flow_id != flow_id]
            if pending and time.monotonic() > deadline:
                raise AssertionError(f"neither an offer nor an end within {timeout}s for {pending}")
            time.sleep(0.1)
        return offers

    def outcomes(
        self, flows: list[TrackedFlow], timeout: float = 30, settle: float = 1.0
    ) -> dict[str, list[dict[str, Any]]]:
        """Every flow's events once each has a terminal one (or `timeout` passed), read again after
        `settle` seconds so that a late second terminal event would be seen."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events(flows)
            if all(_terminal_count(e) for e in events.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(settle)
        return self.events(flows)

    def tally(self, events: dict[str, list[dict[str, Any]]]) -> Tally:
        lost, duplicated = [], []
        outcomes: Counter[str] = Counter()
        for flow_id, flow_events in events.items():
            assert [e["seq"] for e in flow_events] == list(range(1, len(flow_events) + 1)), flow_events
            terminal = _terminal_count(flow_events)
            if terminal == 0:
                lost.append(flow_id)
            elif terminal > 1 or flow_events[-1]["type"] not in TERMINAL_TYPES:
                duplicated.append(flow_id)
            outcomes[describe(flow_events[-1]) if flow_events else "none"] += 1
        return Tally(len(events), lost, duplicated, outcomes)


def _terminal_count(events: list[dict[str, Any]]) -> int:
    return sum(event["type"] in TERMINAL_TYPES for event in events)


@dataclass(frozen=True)
class FaultStack:
    """What a fault module's `stack` fixture (tests/faults/conftest.py) starts: a sandbox (`sandbox_flags`,
    `sandbox_env`), a shim with `settings`, and a worker of `concurrency` (0: the tests start their own)."""

    settings: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 0
    sandbox_flags: tuple[str, ...] = ()
    sandbox_env: dict[str, str] | None = None


def stop_stack(pipeline: Pipeline, sandbox: Sandbox) -> None:
    """Ends a module's processes (`stop_pipeline_quickly`, then the sandbox)."""
    stop_pipeline_quickly(pipeline)
    sandbox.process.stop()


def start_stack(
    started: ExitStack, redis_url: str, *, quickly: bool = False, **settings: Any
) -> tuple[Pipeline, Sandbox]:
    """A sandbox and a pipeline on `redis_url` with `settings`, each stopped when `started` closes, the
    sandbox also when the pipeline fails to start; `quickly`: the workers killed (stop_pipeline_quickly)."""
    sandbox = start_sandbox()
    started.callback(sandbox.process.stop)
    pipeline = start_pipeline(redis_url, sandbox.url, **settings)
    started.callback(stop_pipeline_quickly if quickly else Pipeline.stop, pipeline)
    return pipeline, sandbox


def stop_pipeline_quickly(pipeline: Pipeline) -> None:
    """Workers killed (nothing of theirs is kept, and Celery's warm shutdown costs more than a second
    each), then the shim stopped."""
    for worker in pipeline.workers:
        worker.kill()
    pipeline.stop()


def sandbox_stats(sandbox: Sandbox) -> dict[str, Any]:
    stats: dict[str, Any] = sandbox.stats()
    return stats


def faults_injected(sandbox: Sandbox) -> int:
    return sum(sandbox_stats(sandbox)["faults"].values())


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether `condition` came true within `timeout` seconds, asked every 50 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
