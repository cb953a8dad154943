"""The `webhooks` scenario (ours only): the flows of the overhead scenario with webhook endpoints on
local receivers (bench/receiver.py, which verify every delivery with the Standard Webhooks library):
a steady one, one answering 503 half the time, one limited to LIMITED_RATE (taking `connection.*`), and
a dead one (503 always) that gets disabled. The flows run twice, first without the dead endpoint, so the
steady endpoint's lag with the dead one beside it is read against its lag without (a ratio). It reports
how many events a second reach the endpoints, the lags (an event's `at` to its first accepted delivery),
the limited endpoint's busiest second, whether the dead one was disabled (and the steady one told once),
and the Redis memory of the deliveries before and after their retention.
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
LIMITED_RATE = "20/second"
HEADERS = {"Authorization": f"Bearer {CALLER_KEY}"}


@dataclass
class Endpoints:
    pipeline: Pipeline
    steady: tuple[str, str]  # (receiver URL, path)
    flaky: tuple[str, str]
    limited: tuple[str, str]
    dead: tuple[str, str] | None
    ids: dict[str, str]  # name -> endpoint id
    since_ms: int  # the stream's events from here on are the scenario's


@contextmanager
def endpoints(children: Children, pipeline: Pipeline, *, dead: bool) -> Iterator[Endpoints]:
    """Two receivers and the endpoints on them (with a dead one when asked); removed at the end."""
    receivers: list[Child] = []
    try:
        urls = []
        for name in ("steady", "flaky"):
            port = free_port()
            args = [sys.executable, "-m", "bench.receiver", "--port", str(port)]
            receivers.append(children.start(f"receiver-{name}", args))
            wait_for_port(port)
            urls.append(f"http://{RECEIVER_HOST}:{port}")
        wanted: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [
            ("steady", urls[0], "/steady", {}, {}),
            ("flaky", urls[1], "/flaky", {}, {"mode": "flaky", "fail_rate": FLAKY_FAIL_RATE}),
            ("limited", urls[0], "/limited", {"rate_limit": LIMITED_RATE, "events": ["connection.*"]}, {}),
        ]
        if dead:
            wanted.append(("dead", urls[1], "/dead", {}, {"mode": "503"}))
        ids = {}
        for name, url, path, body, settings in wanted:
            answer = httpx.post(
                f"{pipeline.url}/v1/webhooks", json={"url": url + path, **body}, headers=HEADERS
            )
            answer.raise_for_status()
            created = answer.json()
            ids[name] = created["id"]
            httpx.post(f"{url}/_control", json={"path": path, "secret": created["secret"], **settings})
        time.sleep(1.1)  # an endpoint gets the events from its creation second on: start past it
        yield Endpoints(
            pipeline,
            (urls[0], "/steady"),
            (urls[1], "/flaky"),
            (urls[0], "/limited"),
            (urls[1], "/dead") if dead else None,
            ids,
            int(time.time() * 1000),
        )
        for endpoint_id in ids.values():
            httpx.delete(f"{pipeline.url}/v1/webhooks/{endpoint_id}", headers=HEADERS)
    finally:
        children.stop(receivers)


def _report(receiver: tuple[str, str]) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{receiver[0]}/_received", params={"path": receiver[1]}).json()
    return answer


def _events_since(pipeline: Pipeline, since_ms: int, family: str = "") -> dict[str, float]:
    """event id -> its `at` (epoch seconds), for the all-flows stream's flow events (of `family.` when
    given) from `since_ms` on."""
    with redis.Redis.from_url(pipeline.setup.redis_url) as client:
        entries: Any = client.xrange(RedisNames(pipeline.prefix).all_events_stream, f"{since_ms}-0", "+")
    events = {}
    for _, fields in entries:
        event = json.loads(fields[b"event"])
        if "flow_id" not in event or not event["type"].startswith(family):
            continue
        events[event["id"]] = (
            datetime.fromisoformat(event["at"].replace("Z", "+00:00")).astimezone(UTC).timestamp()
        )
    return events


def delivery_memory(pipeline: Pipeline) -> int:
    """Bytes Redis holds for the deliveries: their hashes and the endpoints' listings (MEMORY USAGE)."""
    names = RedisNames(pipeline.prefix)
    total = 0
    with redis.Redis.from_url(pipeline.setup.redis_url) as client:
        for pattern in (names.webhook_delivery("*"), names.webhook_deliveries("*")):
            for key in client.scan_iter(match=pattern, count=1000):
                total += int(client.memory_usage(key, samples=0) or 0)
    return total


def disabled_notices(endpoints: Endpoints) -> int:
    report = _report(endpoints.steady)
    return sum(1 for item in report["accepted"] if json.loads(item["body"])["type"] == "webhook.disabled")


def dead_disabled(endpoints: Endpoints) -> bool:
    listed = httpx.get(f"{endpoints.pipeline.url}/v1/webhooks", headers=HEADERS).json()["webhooks"]
    dead = endpoints.ids.get("dead")
    return any(item["id"] == dead and item["status"] == "disabled" for item in listed)


def measure_deliveries(endpoints: Endpoints, row: Row, patience: float) -> WebhookFigures:
    """Waits (up to `patience` seconds) until the steady and flaky endpoints accepted every event of the
    timed flows and the limited one every `connection.` event."""
    events = _events_since(endpoints.pipeline, endpoints.since_ms)
    connections = _events_since(endpoints.pipeline, endpoints.since_ms, "connection.")
    deadline = time.monotonic() + patience
    while True:
        steady, flaky = _report(endpoints.steady), _report(endpoints.flaky)
        limited = _report(endpoints.limited)
        first_steady = _first_accepts(steady)
        first_flaky = _first_accepts(flaky)
        first_limited = _first_accepts(limited)
        if (
            set(events) <= set(first_steady)
            and set(events) <= set(first_flaky)
            and set(connections) <= set(first_limited)
        ) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    lags = [(first_steady[e] - at) * 1000 for e, at in events.items() if e in first_steady]
    flaky_lags = [(first_flaky[e] - at) * 1000 for e, at in events.items() if e in first_flaky]
    accepts = [first_steady[e] for e in events if e in first_steady] + [
        first_flaky[e] for e in events if e in first_flaky
    ]
    delivered_limited = sum(1 for e in connections if e in first_limited)
    busiest = _busiest_second(limited["arrivals"])
    row.target_met = (
        row.target_met
        and len(lags) == len(flaky_lags) == len(events)
        and delivered_limited == len(connections)
        and busiest <= int(LIMITED_RATE.split("/")[0])
    )
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
        delivered_limited=delivered_limited,
        limited_events=len(connections),
        limited_busiest_second=busiest,
    )


def _busiest_second(arrivals: list[float]) -> int:
    """The most arrivals in any window of a second less 50 ms (the receiver's clock reads them late by
    up to its own scheduling)."""
    moments = sorted(arrivals)
    return max((sum(1 for later in moments if first <= later < first + 0.95) for first in moments), default=0)


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
    extra = []
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
        extra += [
            f"  limited to {LIMITED_RATE} (connection.*): "
            f"{figures.delivered_limited}/{figures.limited_events} accepted, "
            f"busiest second {figures.limited_busiest_second}",
            f"  dead endpoint disabled: {'yes' if figures.dead_disabled else 'NO'}; webhook.disabled notices "
            f"at the steady endpoint: {figures.disabled_notices}",
            "  steady lag beside the dead endpoint / without it: "
            f"p50 {_ratio(figures.lag_p50_ms, figures.lag_p50_without_dead_ms)} "
            f"({figures.lag_p50_without_dead_ms:.1f} ms without), "
            f"p99 {_ratio(figures.lag_p99_ms, figures.lag_p99_without_dead_ms)} "
            f"({figures.lag_p99_without_dead_ms:.1f} ms without)",
            f"  Redis memory of deliveries: {figures.delivery_memory_bytes / 1024:.0f} KiB at the end, "
            f"{figures.delivery_memory_after_retention_bytes / 1024:.0f} KiB once their retention passed",
        ]
    return "\n".join(lines + extra)


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base and base == base and value == value else "n/a"
