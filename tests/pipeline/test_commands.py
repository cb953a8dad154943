"""The command line: bad settings stop with one line and exit 2; `watch` prints a flow's events."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from tests.support.flows import callback, consent, events_of, select, start_flow, wait_for_event
from tests.support.processes import busy_port, promtool, run_cli
from tests.support.stack import Pipeline


@pytest.mark.parametrize(
    ("command", "env", "named"),
    [
        (
            ["shim"],
            {"TOKEN_TTL_SECONDS": "-5", "SHIM_API_KEYS": "a-caller-key-long-enough-000"},
            "TOKEN_TTL_SECONDS",
        ),
        (["shim"], {"SHIM_API_KEYS": ""}, "SHIM_API_KEYS"),
        (["worker"], {"OKTOPOST_RATE_LIMIT": "lots"}, "OKTOPOST_RATE_LIMIT"),
        (["worker"], {"ALLOWED_RETURN_URLS": "ftp://x"}, "ALLOWED_RETURN_URLS"),
        (["watch", "abc"], {"CHANNEL_PREFIX": "bad prefix!"}, "CHANNEL_PREFIX"),
        (
            ["shim"],
            {"OKTOPOST_BASE_URL": "not a url", "SHIM_API_KEYS": "a-caller-key-long-enough-000"},
            "OKTOPOST_BASE_URL",
        ),
        (["worker"], {"WEBHOOK_MAX_PENDING": "0"}, "WEBHOOK_MAX_PENDING"),
        (["worker"], {"WEBHOOK_REPLAY_MAX_EVENTS": "many"}, "WEBHOOK_REPLAY_MAX_EVENTS"),
        (
            ["shim"],
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
                "SHIM_API_KEYS": "a-caller-key-long-enough-000",
            },
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
        (
            ["worker"],
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[::1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (["worker"], {"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://collector:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            ["worker"],
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "not a url"},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
    ],
)
def test_bad_setting_stops_with_one_line_and_exit_2(
    command: list[str], env: dict[str, str], named: str
) -> None:
    result = run_cli(*command, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert named in lines[0]
    assert "Traceback" not in result.stderr


def test_the_shim_that_cannot_listen_says_so_in_one_line_and_exits_2() -> None:
    keys = {"SHIM_API_KEYS": "a-caller-key-long-enough-000", "REDIS_URL": "redis://127.0.0.1:1/0"}
    with busy_port() as port:
        busy = run_cli("shim", "--port", str(port), env=keys)
    assert busy.returncode == 2
    assert busy.stderr == f"oktopost-connect: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    unknown = run_cli("shim", "--host", "no-such-host.invalid", "--port", "8000", env=keys)
    assert unknown.returncode == 2
    lines = unknown.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("oktopost-connect: cannot listen on no-such-host.invalid:8000: ")
    for bad in ("70000", "-1"):
        out_of_range = run_cli("shim", "--port", bad, env=keys)
        assert out_of_range.returncode == 2
        assert (
            out_of_range.stderr
            == f"oktopost-connect: --port must be a port number from 0 to 65535, not {bad}\n"
        )


def test_watch_with_a_timeout_that_is_not_positive_is_a_usage_error() -> None:
    for timeout in ("0", "-1"):
        refused = run_cli("watch", "0" * 40, "--timeout", timeout, env={"REDIS_URL": "redis://127.0.0.1:1/0"})
        assert refused.returncode == 2
        assert refused.stderr.startswith("oktopost-connect: --timeout must be a positive number of seconds")


def test_unknown_command_and_help() -> None:
    assert run_cli("frobnicate").returncode == 2
    helped = run_cli("--help")
    assert helped.returncode == 0
    assert "watch" in helped.stdout
    for command in ("shim", "worker", "sandbox", "watch"):
        result = run_cli(command, "--help")
        assert result.returncode == 0
        assert "usage" in result.stdout.lower()


@pytest.mark.integration
def test_watch_prints_history_then_stops_at_the_terminal_event(pipeline: Pipeline) -> None:
    created = start_flow(pipeline)
    callback(consent(created["redirect_url"]))
    events = events_of(pipeline, created["flow_id"])
    result = run_cli("watch", created["flow_id"], env=pipeline.env)
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert printed == events
    unknown = run_cli("watch", "no-such-flow-000000000000", env=pipeline.env)
    assert unknown.returncode == 2
    assert "no flow" in unknown.stderr


@pytest.mark.integration
def test_metrics_show_shim_and_worker_counters(pipeline: Pipeline) -> None:
    created = start_flow(pipeline)
    callback(consent(created["redirect_url"]))
    events_of(pipeline, created["flow_id"])
    page = start_flow(pipeline, entity_type="page")  # a verify and a complete: two calls timed
    callback(consent(page["redirect_url"]))
    offered = wait_for_event(pipeline, page["flow_id"], "selection.required")["data"]["entities"]
    assert select(pipeline, page["flow_id"], [offered[-1]["id"]]).status_code == 202
    events_of(pipeline, page["flow_id"])
    # a worker adds its metrics to Redis once a second (docs/operations.md): /metrics follows within that
    given_up_at = time.monotonic() + 5
    text = httpx.get(f"{pipeline.shim_url}/metrics").text
    while 'call="complete"' not in text and time.monotonic() < given_up_at:
        time.sleep(0.1)
        text = httpx.get(f"{pipeline.shim_url}/metrics").text
    # Prometheus's own checker reads it: each metric one family (one HELP, one TYPE)
    checked = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert "error" not in (checked.stdout + checked.stderr).lower(), checked.stdout + checked.stderr
    assert 'okc_worker_upstream_seconds_count{call="complete"}' in text
    assert 'okc_worker_upstream_seconds_count{call="verify"}' in text
    assert 'okc_shim_callbacks_total{outcome="claimed"}' in text
    assert 'okc_worker_outcomes_total{outcome="completed"}' in text
    assert "okc_worker_upstream_seconds_bucket" in text
    assert "okc_worker_callback_to_terminal_seconds_count" in text
    assert 'route="/v1/callback/{flow_id}",status="303"' in text or 'route="/v1/callback/{flow_id}"' in text
    assert created["flow_id"] not in text  # labels are route templates, never raw paths
