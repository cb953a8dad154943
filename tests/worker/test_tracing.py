"""Traces cost nothing unless asked for: without OTEL_EXPORTER_OTLP_ENDPOINT the shim and the worker load
nothing of OpenTelemetry's SDK, instrumentations or exporters; and a task message we build carries its
flow's trace context when there is one."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import httpx
import pytest
from celery import Celery
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tests.support.stack import pipeline_env
from tests.support.work import PROFILE, TOKEN, Answers
from worker.config import settings as settings_module
from worker.config.settings import ConfigError, load_settings
from worker.flows.enqueuer import Enqueuer, TaskMessages
from worker.flows.flow import FlowState, Lifetimes
from worker.flows.store import FlowStore
from worker.keys import RedisNames
from worker.observing import tracing
from worker.observing.metrics import WorkerMetrics
from worker.oktopost import OktopostClient
from worker.queueing.names import VERIFY_TASK
from worker.queueing.versions import LibraryVersions
from worker.tasks.leases import LeaseKeeper
from worker.tasks.sweeper import take_up
from worker.tasks.work import TaskContext, TaskOutcome, verify_flow
from worker.upstream.budget import UpstreamBudget
from worker.upstream.clients import Upstreams
from worker.upstream.parking import Unparker
from worker.upstream.retry import RetryPolicy

TESTED = LibraryVersions(celery="5.7.0", kombu="5.7.0")  # worker/queueing/versions.py's range

# a shim built, a worker started (its worker_init), an Oktopost client made: what did they load?
PROCESS = """
import json, sys
from celery import signals
from api_shim.app import create_app
from worker.observing import tracing
import worker.tasks.celery_tasks

create_app()
signals.worker_init.send(sender=None)
ours = ("opentelemetry.sdk.trace", "opentelemetry.instrumentation", "opentelemetry.exporter")
loaded = sorted(name for name in sys.modules if name.startswith(ours))
print(json.dumps({"active": tracing.active(), "loaded": loaded}))
"""


def loaded_by_a_shim_and_a_worker(**settings: str) -> dict[str, object]:
    env = pipeline_env("redis://127.0.0.1:9/0", "http://127.0.0.1:9", 9, **settings)
    done = subprocess.run(
        [sys.executable, "-c", PROCESS], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def test_without_an_endpoint_nothing_of_opentelemetry_is_loaded_or_started() -> None:
    assert loaded_by_a_shim_and_a_worker() == {"active": False, "loaded": []}


def test_with_an_endpoint_the_sdk_the_instrumentations_and_the_exporter_are() -> None:
    answer = loaded_by_a_shim_and_a_worker(otel_exporter_otlp_endpoint="http://127.0.0.1:9")
    assert answer["active"] is True
    loaded = set(answer["loaded"])  # type: ignore[call-overload]
    assert {
        "opentelemetry.sdk.trace",
        "opentelemetry.instrumentation.fastapi",
        "opentelemetry.instrumentation.celery",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    } <= loaded


def test_the_traces_own_endpoint_alone_turns_traces_on() -> None:
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://otel-collector:4318/v1/traces"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": " ", "OTEL_SERVICE_NAME": "x"})


@pytest.mark.parametrize(
    ("endpoint", "protocol"),
    [
        ("http://otel-collector:4318", "http/protobuf"),
        ("https://collector.example/otlp", "http/protobuf"),
        ("otel-collector:4317", "grpc"),
        ("http://[::1]:4317", "grpc"),
    ],
)
def test_a_collector_is_given_as_the_exporters_take_it(endpoint: str, protocol: str) -> None:
    settings = load_settings(
        shim_api_keys="a-caller-key-long-enough-0123",
        otel_exporter_otlp_endpoint=endpoint,
        otel_exporter_otlp_protocol=protocol,
    )
    assert settings.otel_exporter_otlp_endpoint == endpoint


@pytest.mark.parametrize("endpoint", ["not-a-url", "127.0.0.1:4318", "otel-collector:4318/v1/traces"])
@pytest.mark.parametrize("setting", ["otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint"])
def test_a_collector_without_a_scheme_is_refused_over_http(endpoint: str, setting: str) -> None:
    with pytest.raises(ConfigError, match=rf"{setting.upper()}: http/protobuf needs a URL with its scheme"):
        load_settings(shim_api_keys="a-caller-key-long-enough-0123", **{setting: endpoint})
    grpc = load_settings(  # the traces' own protocol decides for them
        shim_api_keys="a-caller-key-long-enough-0123",
        otel_exporter_otlp_traces_protocol="grpc",
        **{setting: endpoint},
    )
    assert getattr(grpc, setting) == endpoint


def test_an_endpoint_without_the_otel_extra_installed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "find_spec", lambda _name: None)
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_ENDPOINT: traces need the otel extra"):
        load_settings(
            shim_api_keys="a-caller-key-long-enough-0123", otel_exporter_otlp_endpoint="http://c:4318"
        )
    assert load_settings(shim_api_keys="a-caller-key-long-enough-0123")  # no endpoint: no extra needed


def test_an_exiting_process_gives_its_last_spans_a_second_at_most() -> None:
    class CollectorAway:  # a TracerProvider whose exporter waits out its timeout
        def __init__(self) -> None:
            self.asked = threading.Event()

        def shutdown(self) -> None:
            self.asked.set()
            time.sleep(30)

    provider = CollectorAway()
    began = time.monotonic()
    tracing._flush_at_exit(provider, within=0.2)
    assert provider.asked.is_set()
    assert time.monotonic() - began < 1


def test_an_unknown_protocol_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        load_settings(shim_api_keys="a-caller-key-long-enough-0123", otel_exporter_otlp_protocol="http/json")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="http/protobuf, grpc"):
        tracing.protocol()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    assert tracing.protocol() == "grpc"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, with a provider of its own (the global one stays untouched)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    monkeypatch.setattr(tracing, "_propagator", TraceContextTextMapPropagator())
    yield exporter
    provider.shutdown()


def message_headers(messages: TaskMessages) -> dict[str, object]:
    envelope = json.loads(messages.prepare(VERIFY_TASK, "flow-0123456789abcdef").message)
    headers: dict[str, object] = envelope["headers"]
    return headers


FLOW_TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_message_built_off_any_span_carries_no_trace() -> None:
    messages = TaskMessages(Celery("tracing-tests", broker="memory://", set_as_current=False))
    assert "traceparent" not in message_headers(messages)
    with tracing.joined(FLOW_TRACE):  # tracing off: nothing to join
        assert "traceparent" not in message_headers(messages)


@pytest.mark.usefixtures("spans")
def test_a_requeued_flows_message_carries_the_flows_trace() -> None:
    messages = TaskMessages(Celery("tracing-tests", broker="memory://", set_as_current=False))
    with tracing.joined(FLOW_TRACE):
        assert message_headers(messages)["traceparent"] == FLOW_TRACE
    assert "traceparent" not in message_headers(messages)


def test_a_message_built_in_a_request_carries_the_requests_span(spans: InMemorySpanExporter) -> None:
    messages = TaskMessages(Celery("tracing-tests", broker="memory://", set_as_current=False))
    with (
        tracing.joined(FLOW_TRACE),
        tracing._tracer.start_as_current_span("GET /v1/callback/{flow_id}") as span,
    ):
        tracing.describe_flow_id("flow-0123456789abcdef")
        carried = message_headers(messages)["traceparent"]
        with tracing.joined("00-11111111111111111111111111111111-2222222222222222-01"):  # already in one
            assert message_headers(messages)["traceparent"] == carried
    context = span.get_span_context()
    assert carried == f"00-{context.trace_id:032x}-{context.span_id:016x}-01"
    assert f"{context.trace_id:032x}" == FLOW_TRACE.split("-")[1]
    (finished,) = spans.get_finished_spans()
    assert finished.attributes == {"flow.id": "flow-0123456789abcdef"}


# a process that exports one span the way the shim and the workers do, then flushes on its way out
EXPORTING = """
from opentelemetry import trace
from worker.observing import tracing

assert tracing.start("oktopost-connect-test")
path = "/v2/social-authorization/abcdefgh.1234"
span = tracing.call_started("verify", "GET", "http://oktopost.invalid", path)
tracing.call_ended(span, 200, None)
trace.get_tracer_provider().shutdown()
"""


def test_traces_go_over_grpc_when_asked() -> None:
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, _context: Any) -> Any:
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        env = pipeline_env(
            "redis://127.0.0.1:9/0",
            "http://127.0.0.1:9",
            9,
            otel_exporter_otlp_endpoint=f"http://127.0.0.1:{port}",
            otel_exporter_otlp_protocol="grpc",
        )
        command = [sys.executable, "-c", EXPORTING]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    finally:
        server.stop(grace=None)
    spans = [
        span
        for request in received
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    assert [span.name for span in spans] == ["oktopost verify"]
    attributes = {item.key: item.value.string_value for item in spans[0].attributes}
    assert attributes["url.full"] == "http://oktopost.invalid/v2/social-authorization/***"


@pytest.mark.usefixtures("spans")
def test_a_flow_the_sweeper_takes_up_again_keeps_its_trace() -> None:
    """The flow's trace context, kept when it was created in a request, rides in the message of the task
    the sweeper queues again from its own thread (no span current there)."""
    store = FlowStore(
        fakeredis.FakeRedis(server=fakeredis.FakeServer()),
        RedisNames("t"),
        Lifetimes(flow_ttl=60, token_ttl=60, lease=0.6),
    )
    with tracing._tracer.start_as_current_span("POST /v1/authorizations") as request:
        flow = store.create("flow-0123456789abcdef", "LinkedIn", "profile", None, None)
    context = request.get_span_context()
    assert flow.traceparent == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    stored = store.get(flow.flow_id)
    assert stored is not None
    assert stored.traceparent == flow.traceparent
    assert store.claim_callback(flow, "591c6053d81978.11578446867279657339b29ad2799b11ca4ff883").done
    store.take_work(flow.flow_id, "task-a", FlowState.VERIFYING)
    store.lapse_lease(flow.flow_id)
    broker = "redis://flows.invalid:6379/0"  # the flows' Redis: the requeue pushes the message itself
    enqueuer = Enqueuer(Celery("tracing-tests", broker=broker, set_as_current=False), broker, versions=TESTED)
    assert take_up(store, enqueuer, flow.flow_id)
    (message,) = store.redis.lrange(enqueuer.app.conf.task_default_queue, 0, -1)
    assert json.loads(message)["headers"]["traceparent"] == flow.traceparent


def test_a_flow_created_without_traces_keeps_no_trace_context() -> None:
    store = FlowStore(fakeredis.FakeRedis(server=fakeredis.FakeServer()), RedisNames("t"), Lifetimes())
    flow = store.create("flow-0123456789abcdef", "LinkedIn", "profile", None, None)
    assert flow.traceparent == ""
    assert b"traceparent" not in store.redis.hgetall(store.names.flow_state(flow.flow_id))


@pytest.mark.usefixtures("spans")
def test_a_parked_flow_the_unparker_releases_keeps_its_trace() -> None:
    """A flow parked for its account's budget is released by the unparker's thread: its task's message
    carries the flow's own trace context, and the task that parked it named the flow on its span."""
    answers = Answers(httpx.Response(200, json=PROFILE))
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    store = FlowStore(client, RedisNames("p"), Lifetimes(flow_ttl=60, token_ttl=30, lease=5))
    upstream = OktopostClient("https://api.test", "acct", "key", transport=httpx.MockTransport(answers))
    budget = UpstreamBudget(client, store.names.account(store.default_account), 1, 0.3)
    policy = RetryPolicy(max_attempt_seconds=1, min_attempt_seconds=0.1, backoff_max=0.01)
    metrics = WorkerMetrics(client, "p:metrics")
    context = TaskContext(store, Upstreams.single(upstream, budget), policy, metrics, LeaseKeeper(store))
    flows = []
    for index in range(2):
        with tracing._tracer.start_as_current_span("POST /v1/authorizations"):
            flows.append(store.create(f"flow-{index}-0123456789abcdef", "LinkedIn", "profile", None, None))
        assert store.claim_callback(flows[-1], f"{TOKEN}{index}").done
    assert [verify_flow(context, flow.flow_id) for flow in flows] == [
        TaskOutcome.COMPLETED,
        TaskOutcome.PARKED,
    ]
    broker = "redis://flows.invalid:6379/0"  # the flows' Redis: the release pushes the message itself
    enqueuer = Enqueuer(Celery("tracing-tests", broker=broker, set_as_current=False), broker, versions=TESTED)
    unparker = Unparker(store, enqueuer, lambda _: budget, hold=2.0, least_seconds=0.1)
    queue = enqueuer.app.conf.task_default_queue
    deadline = time.monotonic() + 5
    while not store.redis.llen(queue) and time.monotonic() < deadline:
        unparker.release_due()
        time.sleep(0.01)
    (message,) = store.redis.lrange(queue, 0, -1)
    assert json.loads(message)["headers"]["traceparent"] == flows[1].traceparent


def test_a_call_under_way_as_the_process_exits_is_ended_as_stopped(spans: InMemorySpanExporter) -> None:
    answered = tracing.call_started("verify", "GET", "http://oktopost.invalid", "/v2/social-auth/t")
    tracing.call_ended(answered, 200, None)
    hanging = tracing.call_started("complete", "PUT", "http://oktopost.invalid", "/v2/social-auth/t")
    assert [span.name for span in spans.get_finished_spans()] == ["oktopost verify"]

    class Provider:  # what the exit hook shuts down once the open calls are ended
        def shutdown(self) -> None:
            pass

    tracing._flush_at_exit(Provider(), within=1.0)
    finished = spans.get_finished_spans()
    assert [span.name for span in finished] == ["oktopost verify", "oktopost complete"]
    assert finished[1].attributes is not None
    assert finished[1].attributes["error.type"] == "worker_stopped"
    assert finished[1].status.status_code.name == "ERROR"
    assert hanging.end_time is not None
    tracing.end_open_calls()  # nothing left: no span is ended twice
    assert len(spans.get_finished_spans()) == 2
