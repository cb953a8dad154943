"""What a task does with a flow (fakeredis, the real client over MockTransport): outcomes and events."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import fakeredis
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clocks import seen_from
from tests.support.commands import commands_sent
from tests.support.shim import RecordingEnqueuer
from tests.support.work import (
    FAST,
    PAGES,
    PROFILE,
    TOKEN,
    Answers,
    claimed,
    make_context,
    page_flow_completed,
)
from worker.flows.flow import FlowState
from worker.keys import RedisNames
from worker.observing.metrics import UPSTREAM_BUCKETS, RedisMetricsCollector, WorkerMetrics
from worker.replies import text
from worker.tasks.sweeper import sweep_once
from worker.tasks.work import TaskContext, TaskOutcome, complete_flow, expire_flow, verify_flow
from worker.upstream.budget import Asked, UpstreamBudget


def types(context: TaskContext) -> list[str]:
    return [e["type"] for e in context.store.events("flow-1")]


def test_profile_verified_through_transient_faults() -> None:
    handler = Answers(
        httpx.Response(503),
        httpx.ConnectError("refused"),
        httpx.Response(200, text="<html>oops</html>"),
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(200, json=PROFILE),
    )
    context = make_context(handler)
    assert verify_flow(context, claimed(context)) is TaskOutcome.COMPLETED
    assert types(context)[-1] == "connection.completed"
    assert context.store.events("flow-1")[-1]["data"]["credentials"][0]["id"] == "003-1"
    assert len(handler.seen) == 5
    assert all(TOKEN in str(r.url) for r in handler.seen)


def test_page_verification_offers_a_selection_then_completion_connects() -> None:
    put_answer = {
        "Result": True,
        "Credentials": [{"Id": "003-2", "Name": "P2", "Status": "valid", "Network": "LinkedIn"}],
    }
    outcome, context, _ = page_flow_completed(put_answer)
    assert outcome is TaskOutcome.COMPLETED
    assert types(context)[-2:] == ["selection.submitted", "connection.completed"]


def test_a_token_refused_at_the_end_of_its_life_expires_the_flow() -> None:
    """ "invalid or has expired" with less than a quarter of TOKEN_TTL_SECONDS left: expired, not failed."""
    refused = httpx.Response(404, json={"Result": False, "Errors": {"API": {"Error": "Token is invalid"}}})
    context = make_context(Answers(refused), token_ttl=30)
    flow = context.store.create("flow-1", "LinkedIn", "profile", None, None)
    assert seen_from(context.store, -24).claim_callback(flow, TOKEN).done  # 6 s of 30 left
    assert verify_flow(context, "flow-1") is TaskOutcome.EXPIRED
    ended = context.store.events("flow-1")[-1]
    assert ended["type"] == "authorization.expired"
    assert ended["data"] == {"stage": "verify"}

    fresh = make_context(Answers(refused), token_ttl=30)  # 10 s of 30 left: a token that is invalid
    flow = fresh.store.create("flow-1", "LinkedIn", "profile", None, None)
    assert seen_from(fresh.store, -20).claim_callback(flow, TOKEN).done
    assert verify_flow(fresh, "flow-1") is TaskOutcome.FAILED


@pytest.mark.parametrize(
    ("response", "code"),
    [
        (
            httpx.Response(
                200, json={"Result": False, "Errors": {"API": {"Error": "Token is invalid or has expired"}}}
            ),
            "token_invalid",
        ),
        (httpx.Response(404, json={"Result": False, "Errors": []}), "token_invalid"),
        (httpx.Response(401, json={"Result": False}), "unauthorized"),
        (
            httpx.Response(400, json={"Result": False, "Errors": {"Param": {"get": "Missing value"}}}),
            "upstream_rejected",
        ),
    ],
)
def test_refusal_fails_the_flow_at_once(response: httpx.Response, code: str) -> None:
    handler = Answers(response)
    context = make_context(handler)
    assert verify_flow(context, claimed(context)) is TaskOutcome.FAILED
    failed = context.store.events("flow-1")[-1]
    assert failed["type"] == "authorization.failed"
    assert failed["data"]["code"] == code
    assert failed["data"]["retryable"] is False
    assert failed["data"]["attempts"] == 1
    assert TOKEN not in failed["data"]["message"]
    assert len(handler.seen) == 1


def test_rejected_completion_is_an_invalid_selection() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=PAGES)
        return httpx.Response(400, json={"Result": False, "Errors": {"API": {"Error": "Unknown id: 2"}}})

    context = make_context(handler)
    flow_id = claimed(context, "group")
    verify_flow(context, flow_id)
    context.store.submit_selection(context.store.get(flow_id), ["2"])  # type: ignore[arg-type]
    assert complete_flow(context, flow_id) is TaskOutcome.FAILED
    assert context.store.events(flow_id)[-1]["data"]["code"] == "invalid_selection"


def test_transient_faults_until_the_deadline_expire_instead_of_failing() -> None:
    context = make_context(Answers(httpx.Response(503)), token_ttl=1)
    started = time.time()
    assert verify_flow(context, claimed(context)) is TaskOutcome.EXPIRED
    assert time.time() - started < 1.5
    assert context.store.events("flow-1")[-1]["data"] == {"stage": "verify"}
    assert "authorization.failed" not in types(context)


def test_steps_on_a_finished_or_missing_flow_do_nothing() -> None:
    handler = Answers(httpx.Response(200, json=PROFILE))
    context = make_context(handler)
    flow_id = claimed(context)
    assert verify_flow(context, flow_id) is TaskOutcome.COMPLETED
    assert verify_flow(context, flow_id) is TaskOutcome.SKIPPED
    assert complete_flow(context, flow_id) is TaskOutcome.SKIPPED
    assert verify_flow(context, "missing") is TaskOutcome.SKIPPED
    assert expire_flow(context.store, flow_id) is TaskOutcome.SKIPPED
    assert len(handler.seen) == 1
    assert len(types(context)) == 3


@pytest.mark.parametrize("flush_every", [None, 60.0], ids=["with_the_transition", "summed_in_the_process"])
def test_metrics_add_up_in_redis_and_read_back_as_prometheus(flush_every: float | None) -> None:
    context = make_context(Answers(httpx.Response(503), httpx.Response(200, json=PROFILE)))
    metrics = WorkerMetrics(context.store.redis, "t:metrics", flush_every)
    context = replace(context, metrics=metrics)
    verify_flow(context, claimed(context))
    if flush_every is not None:  # the transition carried none: they reach Redis with the next flush
        assert context.store.redis.hgetall("t:metrics") == {}
        metrics.close()
    families = {f.name: f for f in RedisMetricsCollector(context.store.redis, "t:metrics").collect()}
    outcomes = {s.labels["outcome"]: s.value for s in families["okc_worker_outcomes"].samples}
    assert outcomes == {"completed": 1.0}
    retries = {s.labels["fault"]: s.value for s in families["okc_worker_retries"].samples}
    assert retries == {"ServerError": 1.0}
    calls = {
        (s.labels["call"], s.labels["result"]): s.value for s in families["okc_worker_upstream_calls"].samples
    }
    assert calls == {("verify", "ServerError"): 1.0, ("verify", "ok"): 1.0}
    count = [s.value for s in families["okc_worker_upstream_seconds"].samples if s.name.endswith("_count")]
    assert count == [2.0]
    flow_count = [
        s.value
        for s in families["okc_worker_callback_to_terminal_seconds"].samples
        if s.name.endswith("_count")
    ]
    assert flow_count == [1.0]
    buckets = [s.value for s in families["okc_worker_upstream_seconds"].samples if s.name.endswith("_bucket")]
    assert len(buckets) == len(UPSTREAM_BUCKETS) + 1
    assert buckets[-1] == 2.0
    assert buckets == sorted(buckets)  # cumulative: each bound counts every call at or below it


def test_the_sweepers_expiries_of_flows_a_worker_had_to_finish_count_as_the_tasks_expiries() -> None:
    """FlowsExpiring reads okc_worker_outcomes_total{outcome="expired"}: a flow whose worker never got
    to it before its deadline counts there, one whose user never came back does not."""
    context = make_context(Answers(httpx.Response(200, json=PROFILE)), token_ttl=1)
    store = context.store
    verifying = claimed(context)  # no task takes it up
    abandoned = store.create("flow-2", "LinkedIn", "profile", None, None).flow_id  # awaits its callback
    time.sleep(1.1)
    now = store.clock.now()
    store.redis.hset(store.names.flow_state(abandoned), "deadline", repr(now - 0.1))
    store.redis.zadd(store.names.deadlines, {abandoned: now - 0.1})
    assert sweep_once(store, RecordingEnqueuer(), metrics=context.metrics) == (2, 0)
    assert [store.events(flow_id)[-1]["type"] for flow_id in (verifying, abandoned)] == [
        "authorization.expired"
    ] * 2
    families = {f.name: f for f in RedisMetricsCollector(store.redis, "t:metrics").collect()}
    outcomes = {s.labels["outcome"]: s.value for s in families["okc_worker_outcomes"].samples}
    assert outcomes == {"expired": 1.0}


def test_metrics_summed_in_the_process_are_flushed_by_a_thread_of_their_own() -> None:
    client: Any = fakeredis.FakeRedis()  # redis-py annotates commands as sync-or-async
    metrics = WorkerMetrics(client, "t:metrics", flush_every=0.05)
    try:
        with metrics.batch():
            metrics.outcome("completed")
            metrics.retry("ServerError")
        metrics.outcome("completed")
        given_up_at = time.monotonic() + 2
        while len(client.hgetall("t:metrics")) < 2 and time.monotonic() < given_up_at:
            time.sleep(0.01)
        assert client.hgetall("t:metrics") == {b"outcome|completed": b"2", b"retry|ServerError": b"1"}
    finally:
        metrics.close()
    assert not any(thread.name == "oktopost-metrics-flush" for thread in threading.enumerate())


def test_a_transition_not_made_adds_none_of_the_metrics_it_carried() -> None:
    context: TaskContext | None = None

    def taken_up_meanwhile(_request: httpx.Request) -> httpx.Response:
        assert context is not None
        context.store.redis.hset(RedisNames("t").flow_state("flow-1"), "owner", "another-task")
        return httpx.Response(200, json=PROFILE)

    context = make_context(taken_up_meanwhile)
    metrics = WorkerMetrics(context.store.redis, "t:metrics", flush_every=60.0)
    context = replace(context, metrics=metrics)
    assert verify_flow(context, claimed(context)) is TaskOutcome.SKIPPED
    metrics.close()
    recorded = {
        text(name): float(text(value)) for name, value in context.store.redis.hgetall("t:metrics").items()
    }
    assert recorded["outcome|skipped"] == 1
    assert "outcome|completed" not in recorded
    assert not any(name.startswith("h|flow|") for name in recorded)  # nor its time to a terminal event


def test_histogram_buckets_are_cumulative_at_scrape_time() -> None:
    client = fakeredis.FakeRedis()
    metrics = WorkerMetrics(client, "t:metrics")
    for seconds in (0.005, 0.03, 0.03, 0.2, 99.0):
        metrics.upstream("verify", "ok", seconds)
    family = next(
        f
        for f in RedisMetricsCollector(client, "t:metrics").collect()
        if f.name == "okc_worker_upstream_seconds"
    )
    cumulative = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert cumulative["0.01"] == 1
    assert cumulative["0.025"] == 1
    assert cumulative["0.05"] == 3
    assert cumulative["0.25"] == 4
    assert cumulative["10.0"] == 4
    assert cumulative["+Inf"] == 5
    total = next(s.value for s in family.samples if s.name.endswith("_sum"))
    assert total == pytest.approx(99.265)


def test_each_call_is_a_sample_set_of_one_upstream_histogram_in_valid_exposition_text() -> None:
    """Verify and complete, both timed: one okc_worker_upstream_seconds family (one HELP, one TYPE) with a
    `call` label each, which Prometheus's own parser reads back."""
    client = fakeredis.FakeRedis()
    metrics = WorkerMetrics(client, "t:metrics")
    metrics.upstream("verify", "ok", 0.03)
    metrics.upstream("complete", "ok", 0.2)
    metrics.upstream("complete", "ServerError", 0.5)
    registry = CollectorRegistry()
    registry.register(RedisMetricsCollector(client, "t:metrics"))
    exposition = generate_latest(registry).decode()
    assert exposition.count("# HELP okc_worker_upstream_seconds ") == 1
    assert exposition.count("# TYPE okc_worker_upstream_seconds ") == 1
    parsed = text_string_to_metric_families(exposition)
    (family,) = [f for f in parsed if f.name == "okc_worker_upstream_seconds"]
    counts = {s.labels["call"]: s.value for s in family.samples if s.name.endswith("_count")}
    assert counts == {"verify": 1.0, "complete": 2.0}


def test_a_batch_reaches_redis_in_one_call_when_it_ends() -> None:
    client = fakeredis.FakeRedis()
    metrics = WorkerMetrics(client, "t:metrics")
    with metrics.batch():
        metrics.outcome("completed")
        metrics.retry("ServerError")
        metrics.retry("ServerError")
        with metrics.batch():  # nested: the outer block sends
            metrics.outcome("completed")
        assert client.hgetall("t:metrics") == {}
    assert client.hgetall("t:metrics") == {b"outcome|completed": b"2", b"retry|ServerError": b"2"}
    metrics.outcome("expired")  # outside a batch: sent at once
    assert client.hget("t:metrics", "outcome|expired") == b"1"


def test_every_budget_slot_is_scored_by_its_calls_end_once_the_task_is_done() -> None:
    """A call in flight is counted up to its hold (the latest it can end); each call's end is recorded:
    a failed one's before its retry, an answered one's after the flow's step (off the latency path)."""
    seen_in_window: list[list[float]] = []

    def handler(_request: httpx.Request) -> httpx.Response:
        seen_in_window.append(
            [
                score
                for _, score in context.store.redis.zrange(
                    context.upstreams.budgets()[0].names.budget_window, 0, -1, withscores=True
                )
            ]
        )
        return httpx.Response(503) if len(seen_in_window) == 1 else httpx.Response(200, json=PROFILE)

    context = make_context(handler)
    started = time.time()
    assert verify_flow(context, claimed(context)) is TaskOutcome.COMPLETED
    # during the first call: its own slot, counted up to its hold; during the retry: the first call's
    # slot already scored by its end, and the retry's own up to its hold
    assert len(seen_in_window[0]) == 1
    assert seen_in_window[0][0] > time.time() + FAST.max_attempt_seconds
    assert sorted(seen_in_window[1])[0] <= time.time() < sorted(seen_in_window[1])[1]
    ends = [
        score
        for _, score in context.store.redis.zrange(
            context.upstreams.budgets()[0].names.budget_window, 0, -1, withscores=True
        )
    ]
    assert len(ends) == 2
    assert all(started <= end <= time.time() for end in ends)


def test_a_verified_profile_costs_two_redis_calls_its_slot_asked_with_its_take() -> None:
    context = make_context(Answers(httpx.Response(200, json=PROFILE)))
    assert verify_flow(context, claimed(context)) is TaskOutcome.COMPLETED  # scripts loaded, clock read
    flow = context.store.create("flow-2", "LinkedIn", "profile", None, None)
    assert context.store.claim_callback(flow, TOKEN + "2").done
    client = context.store.redis
    with commands_sent(client) as sent:
        assert verify_flow(context, "flow-2") is TaskOutcome.COMPLETED
    # the work taken with its budget slot, and the transition with the task's aftermath: the call's end
    # in the budget's window and the task's metrics
    assert sent == ["EVALSHA", "EVALSHA"]
    window = context.store.redis.zrange(
        RedisNames("t").account(context.store.default_account).budget_window, 0, -1, withscores=True
    )
    assert len(window) == 2
    assert all(end <= context.store.clock.now() for _, end in window)  # both calls scored by their end
    metrics = {k.decode(): float(v) for k, v in client.hgetall("t:metrics").items()}
    assert metrics["outcome|completed"] == 2
    assert metrics["call|verify|ok"] == 2
    assert metrics["h|flow|count"] == 2


def test_the_take_asks_the_budget_only_for_a_flow_of_that_account_that_has_its_token() -> None:
    context = make_context(Answers(httpx.Response(200, json=PROFILE)))
    budget = context.upstreams.budgets()[0]
    ask, waiter = budget.first_ask(FAST.min_attempt_seconds, FAST.max_attempt_seconds + 1)
    store = context.store
    taken = store.take_work(claimed(context), "task-a", FlowState.VERIFYING, ask)
    assert taken.flow is not None
    assert taken.asked is not None
    assert store.redis.zscore(budget.names.budget_window, waiter) is not None  # its slot, granted

    other = store.create("flow-2", "LinkedIn", "profile", None, None, account="another-account")
    assert store.claim_callback(other, TOKEN + "2").done
    assert store.take_work("flow-2", "task-b", FlowState.VERIFYING, ask).asked is None
    tokenless = store.create("flow-3", "LinkedIn", "profile", None, None)
    assert store.claim_callback(tokenless, TOKEN + "3").done
    store.redis.delete(store.names.flow_token("flow-3"))
    assert store.take_work("flow-3", "task-c", FlowState.VERIFYING, ask).asked is None
    assert store.redis.zcard(budget.names.budget_window) == 1  # neither took a slot


def test_a_slot_asked_with_the_take_and_never_called_with_is_given_back() -> None:
    context = make_context(Answers(httpx.Response(200, json=PROFILE)))
    budget = context.upstreams.budgets()[0]
    flow_id = claimed(context)
    context.leases.close(lambda held: held.mark_lost())  # the worker stops: the flow is handed back
    assert verify_flow(context, flow_id) is TaskOutcome.SKIPPED
    window = context.store.redis.zrange(budget.names.budget_window, 0, -1, withscores=True)
    assert len(window) == 1  # the slot the take was granted, scored by now: it frees a period later
    assert window[0][1] <= context.store.clock.now()
    assert context.store.redis.zcard(budget.names.budget_queue) == 0


def test_an_unused_ask_gives_its_slot_or_its_place_in_the_queue_back() -> None:
    context = make_context(Answers(httpx.Response(200, json=PROFILE)))
    names = context.upstreams.budgets()[0].names
    one_a_second = UpstreamBudget(context.store.redis, names, 1, 1.0)
    store = context.store
    asks = [one_a_second.first_ask(FAST.min_attempt_seconds, 2.0) for _ in range(2)]
    answers = []
    for index, (ask, _) in enumerate(asks):
        flow = store.create(f"flow-{index}", "LinkedIn", "profile", None, None)
        assert store.claim_callback(flow, f"{TOKEN}{index}").done
        answers.append(store.take_work(f"flow-{index}", "task", FlowState.VERIFYING, ask).asked)
    assert [text(answer[0]) for answer in answers] == ["granted", "wait"]
    assert store.redis.zcard(names.budget_queue) == 1  # the second waits in the queue
    for (_, waiter), answer in zip(asks, answers, strict=True):
        one_a_second.unused(Asked(waiter, answer))
    assert store.redis.zcard(names.budget_queue) == 0
    window = store.redis.zrange(names.budget_window, 0, -1, withscores=True)
    assert len(window) == 1
    assert window[0][1] <= store.clock.now()  # scored by its end: no call in flight
