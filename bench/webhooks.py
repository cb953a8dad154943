"""The `webhooks` scenario (ours only): the flows of the overhead scenario with two webhook endpoints on
local receivers (bench/receiver.py, which verify every delivery with the Standard Webhooks library),
one of them answering 503 half the time. It reports how many events a second reach the endpoints and
the lag from an event's `at` to its first accepted delivery, for the steady and the flaky endpoint.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import redis

from bench.report import Row, WebhookFigures, percentile
from bench.scenarios import completion_rate
from bench.systems import CALLER_KEY, RECEIVER_HOST, Pipeline
from cli.processes import Child, Children, free_port, wait_for_port
from worker.keys import RedisNames

FLAKY_FAIL_RATE = 0.5


@dataclass
class Endpoints:
    pipeline: Pipeline
    steady: tuple[str, str]  # (receiver URL, path)
    flaky: tuple[str, str]
    ids: list[str]
    since_ms: int  # the stream's events from here on are the scenario's


@contextmanager
def endpoints(children: Children, pipeline: Pipeline) -> Iterator[Endpoints]:
    """Two receivers and an endpoint on each; removed at the end."""
    receivers: list[Child] = []
    try:
        urls = []
        for name in ("steady", "flaky"):
            port = free_port()
            args = [sys.executable, "-m", "bench.receiver", "--port", str(port)]
            receivers.append(children.start(f"receiver-{name}", args))
            wait_for_port(port)
            urls.append(f"http://{RECEIVER_HOST}:{port}")
        ids = []
        headers = {"Authorization": f"Bearer {CALLER_KEY}"}
        for url, path, settings in (
            (urls[0], "/steady", {}),
            (urls[1], "/flaky", {"mode": "flaky", "fail_rate": FLAKY_FAIL_RATE}),
        ):
            answer = httpx.post(f"{pipeline.url}/v1/webhooks", json={"url": url + path}, headers=headers)
            answer.raise_for_status()
            created = answer.json()
            ids.append(created["id"])
            httpx.post(f"{url}/_control", json={"path": path, "secret": created["secret"], **settings})
        time.sleep(1.1)  # an endpoint gets the events from its creation second on: start past it
        yield Endpoints(pipeline, (urls[0], "/steady"), (urls[1], "/flaky"), ids, int(time.time() * 1000))
        for endpoint_id in ids:
            httpx.delete(f"{pipeline.url}/v1/webhooks/{endpoint_id}", headers=headers)
    finally:
        children.stop(receivers)


def _report(receiver: tuple[str, str]) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{receiver[0]}/_received", params={"path": receiver[1]}).json()
    return answer


def _events_since(pipeline: Pipeline, since_ms: int) -> dict[str, float]:
    """event id -> its `at` (epoch seconds), for the all-flows stream's events from `since_ms` on."""
    with redis.Redis.from_url(pipeline.setup.redis_url) as client:
        entries: Any = client.xrange(RedisNames(pipeline.prefix).all_events_stream, f"{since_ms}-0", "+")
    events = {}
    for _, fields in entries:
        event = json.loads(fields[b"event"])
        events[event["id"]] = (
            datetime.fromisoformat(event["at"].replace("Z", "+00:00")).astimezone(UTC).timestamp()
        )
    return events


def measure_deliveries(endpoints: Endpoints, row: Row, patience: float) -> WebhookFigures:
    """Waits (up to `patience` seconds) until both endpoints accepted every event of the timed flows."""
    events = _events_since(endpoints.pipeline, endpoints.since_ms)
    deadline = time.monotonic() + patience
    while True:
        steady, flaky = _report(endpoints.steady), _report(endpoints.flaky)
        first_steady = _first_accepts(steady)
        first_flaky = _first_accepts(flaky)
        if (
            set(events) <= set(first_steady) and set(events) <= set(first_flaky)
        ) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    lags = [(first_steady[e] - at) * 1000 for e, at in events.items() if e in first_steady]
    flaky_lags = [(first_flaky[e] - at) * 1000 for e, at in events.items() if e in first_flaky]
    accepts = [first_steady[e] for e in events if e in first_steady] + [
        first_flaky[e] for e in events if e in first_flaky
    ]
    row.target_met = row.target_met and len(lags) == len(flaky_lags) == len(events)
    return WebhookFigures(
        events=len(events),
        delivered_steady=len(lags),
        delivered_flaky=len(flaky_lags),
        events_delivered_per_second=completion_rate(accepts),
        lag_p50_ms=percentile(lags, 50),
        lag_p99_ms=percentile(lags, 99),
        flaky_lag_p50_ms=percentile(flaky_lags, 50),
        flaky_lag_p99_ms=percentile(flaky_lags, 99),
        refused_by_flaky=int(flaky["refused"]),
    )


def _first_accepts(report: dict[str, Any]) -> dict[str, float]:
    first: dict[str, float] = {}
    for item in report["accepted"]:
        first.setdefault(item["id"], float(item["at"]))
    return first


def webhooks_table(rows: list[Row]) -> str:
    lines = [
        f"{'scenario':<12}  {'events':>6}  {'steady':>6}  {'flaky':>6}  {'deliv/s':>7}  "
        f"{'lag p50':>7}  {'lag p99':>7}  {'flaky p50':>9}  {'flaky p99':>9}  {'503s':>5}"
    ]
    for row in rows:
        figures = row.webhooks
        if figures is None:
            continue
        cells = [
            f"{row.scenario:<12}",
            f"{figures.events:>6}",
            f"{figures.delivered_steady:>6}",
            f"{figures.delivered_flaky:>6}",
            f"{figures.events_delivered_per_second:>7.1f}",
            f"{figures.lag_p50_ms:>7.1f}",
            f"{figures.lag_p99_ms:>7.1f}",
            f"{figures.flaky_lag_p50_ms:>9.1f}",
            f"{figures.flaky_lag_p99_ms:>9.1f}",
            f"{figures.refused_by_flaky:>5}",
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)
