"""A task's context on fakeredis with Oktopost behind an httpx MockTransport, for the tests of what a task
does with a flow; and the answers they give."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis
import httpx

from tests.support.shim import RecordingEnqueuer
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.observing.metrics import WorkerMetrics
from worker.oktopost import OktopostClient
from worker.tasks.leases import LeaseKeeper
from worker.tasks.work import TaskContext, TaskOutcome, complete_flow, verify_flow
from worker.upstream.budget import UpstreamBudget
from worker.upstream.clients import Upstreams
from worker.upstream.parking import Unparker
from worker.upstream.retry import RetryPolicy

TOKEN = "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883"
PROFILE = {
    "Result": True,
    "Credential": {"Id": "003-1", "Name": "Jo", "Status": "valid", "Network": "LinkedIn", "Extra": "ignored"},
}
PAGES = {
    "Result": True,
    "token": TOKEN,
    "data": [
        {
            "Id": str(i),
            "Name": f"P{i}",
            "Network": "LinkedIn",
            "ImageLink": "",
            "NetworkUsername": f"p{i}",
            "IsConnected": i == 1,
        }
        for i in (1, 2, 3)
    ],
}
FAST = RetryPolicy(max_attempt_seconds=1, backoff_multiplier=0.001, backoff_max=0.01)


def make_context(handler: Callable[[httpx.Request], httpx.Response], token_ttl: int = 30) -> TaskContext:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    store = FlowStore(client, RedisNames("t"), Lifetimes(flow_ttl=60, token_ttl=token_ttl, lease=5))
    upstream = OktopostClient("https://api.test", "acct", "key", transport=httpx.MockTransport(handler))
    budget = UpstreamBudget(client, RedisNames("t").account(store.default_account), 1000, 1.0)
    metrics = WorkerMetrics(client, "t:metrics")
    return TaskContext(store, Upstreams.single(upstream, budget), FAST, metrics, LeaseKeeper(store))


def claimed(context: TaskContext, entity_type: str = "profile") -> str:
    flow = context.store.create("flow-1", "LinkedIn", entity_type, None, None)
    assert context.store.claim_callback(flow, TOKEN).done
    return "flow-1"


def page_flow_completed(
    put_answer: dict[str, Any], verify_answer: dict[str, Any] | None = None
) -> tuple[TaskOutcome, TaskContext, list[httpx.Request]]:
    """A page flow ("flow-1") verified against `verify_answer` (PAGES unless given), "2" selected and
    completed against `put_answer`: the completion's outcome, the context, the requests Oktopost saw."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=(verify_answer or PAGES) if request.method == "GET" else put_answer)

    context = make_context(handler)
    flow_id = claimed(context, "page")
    assert verify_flow(context, flow_id) is TaskOutcome.SELECTION_REQUIRED
    waiting = context.store.get(flow_id)
    assert waiting is not None
    assert waiting.state is FlowState.AWAITING_SELECTION
    assert context.store.submit_selection(waiting, ["2"]).done
    return complete_flow(context, flow_id), context, seen


class Answers:
    """Oktopost as a MockTransport handler: `responses` in turn (the last one for ever), each request seen."""

    def __init__(self, *responses: httpx.Response | Exception) -> None:
        self.queue = list(responses)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        item = self.queue.pop(0) if len(self.queue) > 1 else self.queue[0]
        if isinstance(item, Exception):
            raise item
        return item


def unparker_for(context: TaskContext, enqueuer: RecordingEnqueuer) -> Unparker:
    budget = budget_of(context)
    return Unparker(
        context.store,
        enqueuer,
        lambda parked: budget if parked == budget.names.parked_flows else None,
        hold=2.0,
        least_seconds=context.policy.min_attempt_seconds,
    )


def budget_of(context: TaskContext) -> UpstreamBudget:
    upstream = context.upstreams.get(context.store.default_account)
    assert upstream is not None
    return upstream.budget
