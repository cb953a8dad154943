"""Prometheus metrics of the shim, served on /metrics."""

from __future__ import annotations

import redis
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.registry import Collector

from worker.connections.checks import ConnectionCollector
from worker.connections.records import ConnectionStore
from worker.keys import RedisNames
from worker.observing.metrics import RedisMetricsCollector, WorkersCollector
from worker.upstream.account import Account, AccountCollector
from worker.webhooks.endpoints import BacklogCollector, WebhookStore

REQUESTS = Counter(
    "okc_shim_requests_total", "HTTP requests answered by the shim", ["route", "method", "status"]
)
REQUEST_SECONDS = Histogram(
    "okc_shim_request_seconds",
    "Time to answer a request",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CALLBACK_SECONDS = Histogram(
    "okc_shim_callback_seconds",
    "Time to claim and enqueue a callback",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
)
CALLBACKS = Counter("okc_shim_callbacks_total", "Callbacks by outcome", ["outcome"])
ADMISSIONS_REFUSED = Counter(
    "okc_shim_admissions_refused_total", "New flows refused with 503: the upstream budget is spoken for"
)
_worker_collectors: list[Collector] = []
FLOWS_STARTED = Counter("okc_shim_flows_started_total", "Flows started", ["network", "entity_type"])


def install(client: redis.Redis, names: RedisNames, accounts: list[Account], webhooks: WebhookStore) -> None:
    """/metrics also shows the workers' metrics, how many workers are consuming, each configured Oktopost
    account's standing, the webhook deliveries not done yet and the connections by account and status,
    read from Redis at scrape time."""
    while _worker_collectors:  # one of each per process, even when tests build several apps
        REGISTRY.unregister(_worker_collectors.pop())
    _worker_collectors.extend(
        [
            RedisMetricsCollector(client, names.worker_metrics),
            WorkersCollector(client, names),
            AccountCollector(accounts),
            BacklogCollector(webhooks),
            ConnectionCollector(ConnectionStore(webhooks.redis, webhooks.names, int(webhooks.retention))),
        ]
    )
    for collector in _worker_collectors:
        REGISTRY.register(collector)
