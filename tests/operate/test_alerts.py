"""The shipped alert rules and Grafana dashboard: the rules pass their promtool tests, and every metric
they or the dashboard name is one a live shim's /metrics serves."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import promtool, start_cli
from tests.support.stack import RedisServer, Sandbox, start_pipeline
from worker.keys import RedisNames
from worker.observing.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
METRIC = re.compile(r"\bokc_[a-z0-9_]+")
# what the contract asks the rules to watch, by alert name
EXPECTED_ALERTS = {
    "OktopostAccountPaused",
    "OktopostDailyBudgetLow",
    "FlowsExpiring",
    "WebhookDeliveriesFailing",
    "WebhookBacklogStale",
    "WebhookDeliveriesGivenUp",
    "WebhookEndpointDisabled",
    "ConnectionChecksFailing",
    "WebhookEventsHeldBack",
    "NoWorkerConsuming",
}
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def rule_expressions() -> dict[str, str]:
    rules = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboard_expressions(path: Path) -> list[str]:
    def panels(items: list[dict]) -> Iterator[dict]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    dashboard = json.loads(path.read_text())
    return [target["expr"] for panel in panels(dashboard["panels"]) for target in panel.get("targets", [])]


def test_alert_rules_are_valid_and_pass_their_promtool_tests() -> None:
    checked = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_tested_and_the_contract_s_alerts_are_there() -> None:
    alerts = set(rule_expressions())
    assert alerts >= EXPECTED_ALERTS
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    assert tested == alerts, f"alerts without a promtool test: {sorted(alerts - tested)}"


def test_the_dashboard_is_grafana_json_with_a_datasource_variable_and_unique_panels() -> None:
    assert DASHBOARDS, "no dashboard in deploy/grafana"
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["title"]
        assert dashboard["uid"]
        assert any(v["type"] == "datasource" for v in dashboard["templating"]["list"])
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        assert dashboard_expressions(path), f"{path.name} has no queries"


def exported_names(text: str) -> set[str]:
    """Every sample name /metrics serves or declares (a family without samples yet counts too)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES.get(family.type, ("",)))
    return names


@pytest.fixture(scope="module")
def metrics_text(redis_server: RedisServer, sandbox: Sandbox) -> Iterator[str]:
    """A live shim and worker of their own; one observation of each of the workers' kinds is recorded
    the way the workers record them, so every histogram family shows on the shim's /metrics."""
    running = start_pipeline(redis_server.url, sandbox.url)
    try:
        observe = WorkerMetrics(running.redis(), RedisNames(running.prefix).worker_metrics)
        observe.outcome("expired")
        observe.retry("UpstreamUnavailable")
        observe.upstream("verify", "ok", 0.05)
        observe.callback_to_terminal(0.4)
        observe.webhook_delivery("failed")
        observe.webhook_attempt("5xx", 0.2)
        deadline = time.monotonic() + 30
        while True:  # until the worker shows it is consuming
            text = httpx.get(f"{running.shim_url}/metrics").text
            if re.search(r"^okc_workers_consuming 1\.0$", text, re.MULTILINE) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        yield text
    finally:
        running.stop()


@pytest.mark.integration
def test_the_shim_counts_the_workers_consuming(metrics_text: str) -> None:
    assert re.search(r"^okc_workers_consuming 1\.0$", metrics_text, re.MULTILINE), metrics_text
    for queue in ("flows", "deliveries"):  # a worker serves both unless told otherwise
        assert f'okc_queue_workers{{queue="{queue}"}} 1.0' in metrics_text.splitlines(), metrics_text


@pytest.mark.integration
def test_a_worker_serving_deliveries_only_leaves_flows_without_a_consumer(
    redis_server: RedisServer, sandbox: Sandbox
) -> None:
    """What NoWorkerConsuming reads for flows: a worker started with `--serve deliveries` consumes, but
    no flow is verified while it is the only one."""
    running = start_pipeline(redis_server.url, sandbox.url, workers=0)
    try:
        hostname = f"deliveries-{time.time_ns()}@%h"
        command = ["worker", "--concurrency", "2", "--serve", "deliveries", "--hostname", hostname]
        running.workers.append(start_cli(command, env=running.env, name="worker-deliveries"))
        deadline = time.monotonic() + 30
        while True:
            lines = httpx.get(f"{running.shim_url}/metrics").text.splitlines()
            if "okc_workers_consuming 1.0" in lines or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "okc_workers_consuming 1.0" in lines
        assert 'okc_queue_workers{queue="deliveries"} 1.0' in lines
        assert 'okc_queue_workers{queue="flows"} 0.0' in lines
    finally:
        running.stop()


@pytest.mark.integration
def test_every_metric_an_alert_names_is_exported(metrics_text: str) -> None:
    exported = exported_names(metrics_text)
    for alert, expr in rule_expressions().items():
        named = set(METRIC.findall(expr))
        assert named, f"{alert} names no okc_ metric"
        assert named <= exported, f"{alert} names metrics /metrics does not serve: {named - exported}"


@pytest.mark.integration
@pytest.mark.parametrize("path", DASHBOARDS, ids=[path.name for path in DASHBOARDS])
def test_every_metric_the_dashboard_queries_is_exported(metrics_text: str, path: Path) -> None:
    exported = exported_names(metrics_text)
    for expr in dashboard_expressions(path):
        named = set(METRIC.findall(expr))
        assert named, f"a panel names no okc_ metric: {expr}"
        assert named <= exported, f"{path.name} queries metrics /metrics does not serve: {named - exported}"
