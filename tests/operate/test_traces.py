"""Traces over real processes: a shim and a Celery worker exporting to an OTLP/HTTP receiver (or a gRPC
one), flows driven through the sandbox to their end.

One trace per flow: the caller's POST /v1/authorizations or reconnect (its traceparent continued), the
browser's callback, the selection (the caller's or the hosted page's), every task and every Oktopost call
share one trace id and name the flow; no span attribute holds the okt token, the Oktopost key, its
Basic-auth value or the caller's key. A malformed traceparent is ignored; a collector that never answers
slows no request and no stop.
"""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cli.processes.readiness import free_port
from tests.support.flows import callback, consent, events_of, okt_of, select, wait_for_event
from tests.support.ledger import start_stack
from tests.support.otlp import GrpcOtlpReceiver, OtlpReceiver, ReceivedSpan, silent_collector
from tests.support.stack import API_KEY, Pipeline, RedisServer
from worker.queueing.names import COMPLETE_TASK, VERIFY_TASK

pytestmark = pytest.mark.integration

OKTOPOST_ACCOUNT, OKTOPOST_KEY = "demo-account", "demo-key"  # tests.support.stack.pipeline_env's


@pytest.fixture(scope="module")
def traced(redis_server: RedisServer) -> Iterator[tuple[OtlpReceiver, Pipeline]]:
    with (
        OtlpReceiver() as receiver,
        exporting_pipeline(
            redis_server.url,
            receiver.url,
            # every header recorded, as an operator may ask: the secrets among them must still not be
            otel_instrumentation_http_capture_headers_server_request=".*",
            otel_instrumentation_http_capture_headers_server_response=".*",
        ) as pipeline,
    ):
        yield receiver, pipeline


@contextlib.contextmanager
def exporting_pipeline(redis_url: str, collector: str, **settings: Any) -> Iterator[Pipeline]:
    """A sandbox, and a shim with one worker exporting their traces to `collector`; both stopped on
    leaving, and the sandbox when the pipeline fails to start."""
    with contextlib.ExitStack() as started:
        pipeline, _ = start_stack(
            started,
            redis_url,
            workers=1,
            otel_exporter_otlp_endpoint=collector,
            otel_bsp_schedule_delay=100,  # ms: spans reach the collector soon after they end
            **settings,
        )
        yield pipeline


def start(
    pipeline: Pipeline, entity_type: str, traceparent: str | None, route: str = "/v1/authorizations"
) -> dict[str, str]:
    headers = {**pipeline.headers, **({"traceparent": traceparent} if traceparent else {})}
    body = {"network": "Facebook", "type": entity_type, "return_url": "https://app.example/done"}
    answer = httpx.post(f"{pipeline.shim_url}{route}", json=body, headers=headers, timeout=15)
    assert answer.status_code == 201, answer.text
    created: dict[str, str] = answer.json()
    return created


def of_flow(spans: list[ReceivedSpan], flow_id: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.attributes.get("flow.id") == flow_id]


def named(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.name == name]


# the spans of a flow from its start to its verify call, whoever exported them
STARTED_TO_VERIFY = (
    "POST /v1/authorizations",
    "oktopost start authorization",
    "GET /v1/callback/{flow_id}",
    f"run/{VERIFY_TASK}",
    "oktopost verify",
)


def spans_of_flow(
    receiver: OtlpReceiver | GrpcOtlpReceiver, flow_id: str, what: str, *names: str
) -> list[ReceivedSpan]:
    """The flow's spans, once the receiver holds one of each of `names`: the shim and the worker export
    their spans each in batches of their own, so a span the shim ended first may arrive last."""

    def every_name(spans: list[ReceivedSpan]) -> bool:
        flow_spans = of_flow(spans, flow_id)
        return all(named(flow_spans, name) for name in names)

    return of_flow(receiver.wait_for(every_name, timeout=20, what=what), flow_id)


def test_a_flow_is_one_trace_from_the_callers_request_to_its_last_oktopost_call(
    traced: tuple[OtlpReceiver, Pipeline],
) -> None:
    receiver, pipeline = traced
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    created = start(pipeline, "page", f"00-{caller_trace}-{caller_span}-01")
    flow_id = created["flow_id"]
    callback_url = consent(created["redirect_url"])
    token = okt_of(callback_url)
    claimed = callback(callback_url)  # another client than the caller's, with no trace of its own
    assert claimed.status_code == 303
    cookie = claimed.cookies.get(next(iter(claimed.cookies.keys())))
    assert cookie
    offer = wait_for_event(pipeline, flow_id, "selection.required")
    assert select(pipeline, flow_id, [offer["data"]["entities"][1]["id"]]).status_code == 202
    assert events_of(pipeline, flow_id)[-1]["type"] == "connection.completed"

    flow_spans = spans_of_flow(
        receiver,
        flow_id,
        "the flow's spans, from the caller's request to the complete call",
        "POST /v1/authorizations",
        "oktopost start authorization",
        "GET /v1/callback/{flow_id}",
        "POST /v1/authorizations/{flow_id}/selection",
        f"run/{VERIFY_TASK}",
        "oktopost verify",
        f"run/{COMPLETE_TASK}",
        "oktopost complete",
    )
    assert {span.trace_id for span in flow_spans} == {caller_trace}
    (root,) = named(flow_spans, "POST /v1/authorizations")
    assert (root.kind, root.parent_id, root.service) == ("server", caller_span, "oktopost-connect-shim")
    assert root.attributes["flow.tenant"] == "default"
    assert root.attributes["flow.network"] == "Facebook"
    (step1,) = named(flow_spans, "oktopost start authorization")
    assert (step1.kind, step1.parent_id) == ("client", root.span_id)
    (browser,) = named(flow_spans, "GET /v1/callback/{flow_id}")
    assert (browser.kind, browser.parent_id) == ("server", root.span_id)
    assert named(flow_spans, "POST /v1/authorizations/{flow_id}/selection")
    for task, call in ((VERIFY_TASK, "oktopost verify"), (COMPLETE_TASK, "oktopost complete")):
        (task_span,) = named(flow_spans, f"run/{task}")
        assert (task_span.kind, task_span.service) == ("consumer", "oktopost-connect-worker")
        assert task_span.attributes["flow.network"] == "Facebook"
        calls = named(flow_spans, call)
        assert calls
        assert {(span.parent_id, span.kind) for span in calls} == {(task_span.span_id, "client")}
        assert {span.attributes["http.response.status_code"] for span in calls} == {200}
    (verify_task,) = named(flow_spans, f"run/{VERIFY_TASK}")
    assert verify_task.parent_id == browser.span_id  # queued by the callback's claim, in Lua
    assert_no_secrets(receiver.received(), token, cookie)
    assert any(name.startswith("http.request.header.") for name in root.attributes)  # headers were recorded


def test_a_flow_without_a_callers_trace_gets_one_of_its_own(traced: tuple[OtlpReceiver, Pipeline]) -> None:
    receiver, pipeline = traced
    created = start(pipeline, "profile", None)
    flow_id = created["flow_id"]
    callback_url = consent(created["redirect_url"])
    assert callback(callback_url).status_code == 303
    assert events_of(pipeline, flow_id)[-1]["type"] == "connection.completed"
    flow_spans = spans_of_flow(
        receiver, flow_id, "the flow's spans, from its start to verify", *STARTED_TO_VERIFY
    )
    (root,) = named(flow_spans, "POST /v1/authorizations")
    assert root.parent_id == ""
    assert {span.trace_id for span in flow_spans} == {root.trace_id}
    assert {span.name for span in flow_spans} >= {
        "oktopost start authorization",
        "GET /v1/callback/{flow_id}",
        f"run/{VERIFY_TASK}",
        "oktopost verify",
    }
    assert_no_secrets(receiver.received(), okt_of(callback_url))


def test_a_reconnect_is_one_trace_from_the_callers_request(traced: tuple[OtlpReceiver, Pipeline]) -> None:
    receiver, pipeline = traced
    first = start(pipeline, "profile", None)
    assert callback(consent(first["redirect_url"])).status_code == 303
    completed = events_of(pipeline, first["flow_id"])[-1]
    assert completed["type"] == "connection.completed"
    connection_id = completed["data"]["credentials"][0]["id"]

    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    route = f"/v1/connections/{connection_id}/reconnect"
    created = start(pipeline, "profile", f"00-{caller_trace}-{caller_span}-01", route=route)
    flow_id = created["flow_id"]
    callback_url = consent(created["redirect_url"])
    assert callback(callback_url).status_code == 303
    assert events_of(pipeline, flow_id)[-1]["type"] == "connection.completed"
    flow_spans = spans_of_flow(
        receiver,
        flow_id,
        "the reconnect's spans, from the caller's request to verify",
        "POST /v1/connections/{connection_id}/reconnect",
        "oktopost start authorization",
        "GET /v1/callback/{flow_id}",
        f"run/{VERIFY_TASK}",
        "oktopost verify",
    )
    assert {span.trace_id for span in flow_spans} == {caller_trace}
    (root,) = named(flow_spans, "POST /v1/connections/{connection_id}/reconnect")
    assert (root.kind, root.parent_id) == ("server", caller_span)
    assert {span.name for span in flow_spans} >= {
        "oktopost start authorization",
        "GET /v1/callback/{flow_id}",
        f"run/{VERIFY_TASK}",
    }
    assert_no_secrets(receiver.received(), okt_of(callback_url))


def test_a_selection_on_the_hosted_page_stays_in_the_flows_trace(
    traced: tuple[OtlpReceiver, Pipeline],
) -> None:
    receiver, pipeline = traced
    created = start(pipeline, "page", None)
    flow_id = created["flow_id"]
    page_url = f"{pipeline.shim_url}/connect/{flow_id}"
    foreign = "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01"  # the browser's own: not the flow's
    with httpx.Client(follow_redirects=False, timeout=5) as browser:
        assert browser.get(consent(created["redirect_url"])).status_code == 303
        wait_for_event(pipeline, flow_id, "selection.required")
        form = browser.get(page_url).text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        choices = re.findall(r'name="ids" value="([^"]+)" id="[^"]+">', form)  # not disabled
        assert csrf is not None
        assert choices
        chosen = browser.post(
            f"{page_url}/selection",
            data={"ids": choices[:1], "csrf": csrf.group(1)},
            headers={"traceparent": foreign},
        )
        assert (chosen.status_code, chosen.headers["location"]) == (303, page_url)
    assert events_of(pipeline, flow_id)[-1]["type"] == "connection.completed"
    flow_spans = spans_of_flow(
        receiver,
        flow_id,
        "the flow's spans, from its start to the complete call",
        "POST /v1/authorizations",
        "POST /connect/{flow_id}/selection",
        f"run/{COMPLETE_TASK}",
        "oktopost complete",
    )
    (root,) = named(flow_spans, "POST /v1/authorizations")
    assert {span.trace_id for span in flow_spans} == {root.trace_id}
    (page_selection,) = named(flow_spans, "POST /connect/{flow_id}/selection")
    assert page_selection.kind == "server"
    (complete_task,) = named(flow_spans, f"run/{COMPLETE_TASK}")
    assert complete_task.parent_id == page_selection.span_id


@pytest.mark.parametrize(
    "traceparent",
    [
        "not a traceparent",
        "00-00000000000000000000000000000000-0000000000000000-01",  # all-zero ids: invalid
        "00-" + "a" * 32 + "-" + "b" * 16,  # no flags
        "zz-" + "a" * 32 + "-" + "b" * 16 + "-01",
        "00-" + "a" * 32 + "-" + "b" * 16 + "-01\x7f",
    ],
)
def test_a_malformed_traceparent_is_ignored(traced: tuple[OtlpReceiver, Pipeline], traceparent: str) -> None:
    receiver, pipeline = traced
    created = start(pipeline, "profile", traceparent)
    flow_id = created["flow_id"]
    headers = {**pipeline.headers, "traceparent": traceparent}
    status = httpx.get(f"{pipeline.shim_url}/v1/authorizations/{flow_id}", headers=headers, timeout=5)
    assert status.status_code == 200, status.text
    answer = httpx.get(consent(created["redirect_url"]), headers={"traceparent": traceparent}, timeout=5)
    assert answer.status_code == 303
    assert events_of(pipeline, flow_id)[-1]["type"] == "connection.completed"
    flow_spans = spans_of_flow(
        receiver,
        flow_id,
        "the flow's spans, from its start to verify",
        "POST /v1/authorizations",
        "oktopost verify",
    )
    (root,) = named(flow_spans, "POST /v1/authorizations")
    assert root.parent_id == ""
    assert {span.trace_id for span in flow_spans} == {root.trace_id}
    assert root.trace_id not in (("0" * 32), ("a" * 32))


def test_traces_go_to_a_grpc_collector_one_per_flow(redis_server: RedisServer) -> None:
    port = free_port()  # the processes start before the receiver's gRPC threads (GrpcOtlpReceiver says why)
    collector = f"http://127.0.0.1:{port}"
    with (
        exporting_pipeline(redis_server.url, collector, otel_exporter_otlp_protocol="grpc") as pipeline,
        GrpcOtlpReceiver(port) as receiver,
    ):
        caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
        created = start(pipeline, "profile", f"00-{caller_trace}-{caller_span}-01")
        flow_id = created["flow_id"]
        callback_url = consent(created["redirect_url"])
        assert callback(callback_url).status_code == 303
        assert events_of(pipeline, flow_id)[-1]["type"] == "connection.completed"
        flow_spans = spans_of_flow(
            receiver, flow_id, "the flow's spans, from its start to verify", *STARTED_TO_VERIFY
        )
    assert {span.trace_id for span in flow_spans} == {caller_trace}
    assert {span.service for span in flow_spans} == {"oktopost-connect-shim", "oktopost-connect-worker"}
    assert_no_secrets(receiver.received(), okt_of(callback_url))


def test_a_collector_that_never_answers_slows_no_request_and_no_stop(redis_server: RedisServer) -> None:
    grace = 3  # seconds: a stopped worker exits by the grace period plus 2 s, traces or not
    # exports start (and hang) while the flows run
    with (
        silent_collector() as collector,
        exporting_pipeline(redis_server.url, collector, worker_shutdown_grace_seconds=grace) as pipeline,
    ):
        for _ in range(3):
            began = time.monotonic()
            created = start(pipeline, "profile", None)
            claimed = callback(consent(created["redirect_url"]))
            assert claimed.status_code == 303
            assert events_of(pipeline, created["flow_id"])[-1]["type"] == "connection.completed"
            assert time.monotonic() - began < 5
        stopping = [pipeline.shim, *pipeline.workers]
        for process in stopping:
            process.popen.send_signal(signal.SIGTERM)
        began = time.monotonic()
        for process in stopping:
            assert process.popen.wait(grace + 2 + 1) == 0, process.tail()
        assert time.monotonic() - began < grace + 2


def test_a_call_still_hanging_when_a_stopped_worker_exits_is_exported_as_stopped(
    redis_server: RedisServer,
) -> None:
    grace = 1  # seconds: the worker exits this long after SIGTERM, its call still hanging
    with OtlpReceiver() as receiver, contextlib.ExitStack() as started:
        pipeline, sandbox = start_stack(
            started,
            redis_server.url,
            workers=1,
            otel_exporter_otlp_endpoint=receiver.url,
            otel_bsp_schedule_delay=100,
            worker_shutdown_grace_seconds=grace,
        )
        created = start(pipeline, "profile", None)
        callback_url = consent(created["redirect_url"])
        sandbox.set_faults(latency_ms=30_000)  # the verify call hangs past the grace period
        calls = sandbox.stats()["v2_calls"]
        assert callback(callback_url).status_code == 303
        deadline = time.monotonic() + 10
        while sandbox.stats()["v2_calls"] == calls and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sandbox.stats()["v2_calls"] > calls, "the verify call never went out"
        (worker,) = pipeline.workers
        worker.popen.send_signal(signal.SIGTERM)
        assert worker.popen.wait(grace + 5) == 0, worker.tail()
        sandbox.set_faults(latency_ms=0)
        (verify,) = named(
            spans_of_flow(
                receiver, created["flow_id"], "the stopped worker's verify call", "oktopost verify"
            ),
            "oktopost verify",
        )
    assert verify.service == "oktopost-connect-worker"
    assert verify.attributes["error.type"] == "worker_stopped"


def assert_no_secrets(spans: list[ReceivedSpan], token: str, cookie: str | None = None) -> None:
    basic = base64.b64encode(f"{OKTOPOST_ACCOUNT}:{OKTOPOST_KEY}".encode()).decode()
    secrets_ = {"okt token": token, "Oktopost key": OKTOPOST_KEY, "Basic auth": basic, "caller key": API_KEY}
    if cookie is not None:
        secrets_["browser's cookie"] = cookie
    assert spans
    for span in spans:
        for name, value in span.attributes.items():
            for what, secret in secrets_.items():
                assert secret not in str(value), f"{what} in {span.name} attribute {name}"
        assert token not in span.name
