"""Worker metrics kept in Redis, so any number of worker processes on any number of machines add up.

Workers increment fields of one Redis hash; the shim's /metrics reads the hash through
`RedisMetricsCollector` and exposes it in Prometheus format. A task's observations are gathered in the
process while it runs (`batch()`) and added in one call when it ends; a histogram observation adds to
its count, its sum and the one bucket it falls in, and the collector sums buckets up at scrape time. A
worker process sums its observations in memory and adds them once a second (`flush_every`), so a flow's
transition carries no metrics and /metrics is at most about a second behind the workers.

    okc_worker_outcomes_total{outcome}            flows ended (or skipped) by a task, by outcome/code
    okc_worker_retries_total{fault}               attempts retried, by the transient fault seen
    okc_worker_upstream_calls_total{call,result}  calls made to Oktopost
    okc_worker_upstream_seconds{call}             histogram of their latency
    okc_worker_callback_to_terminal_seconds       histogram of time from callback to terminal event
    okc_webhook_deliveries_total{outcome}         deliveries ended: delivered, failed
    okc_webhook_attempts_total{result}            delivery attempts: delivered, 4xx, 5xx, timeout, ...
    okc_webhook_attempt_seconds                   histogram of an attempt's time

`WorkersCollector` adds `okc_workers_consuming`: the workers whose sweeper marked them consuming within
the last WORKER_FRESH_SECONDS (every worker marks itself each second), 0 when none does; and
`okc_queue_workers{queue}`: those of them serving flows' tasks (`flows`) and webhook deliveries
(`deliveries`), as `oktopost-connect worker --serve` chose.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from worker import scripts
from worker.keys import RedisNames
from worker.queueing.names import QUEUE_KINDS
from worker.replies import text

log = logging.getLogger(__name__)

WORKER_FRESH_SECONDS = 5.0  # a worker marked this recently is consuming
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_SEP = "|"
_INF = "+Inf"


class WorkerMetrics:
    """`flush_every` (seconds): observations are summed in the process and added to Redis by a thread of
    its own that often (started with the first), and at `close()`; a flow's transition then carries none.
    None: each batch is added when it ends, or with its flow's transition."""

    def __init__(self, client: redis.Redis, key: str, flush_every: float | None = None) -> None:
        self.redis: Any = client  # redis-py annotates commands as sync-or-async; this is sync
        self.key = key
        self.flush_every = flush_every
        self._add_script = scripts.register(client, "metrics_add")
        self._local = threading.local()  # each task thread gathers its own batch
        self._lock = threading.Lock()
        self._unsent: Counter[str] = Counter()  # with flush_every: summed here until the next flush
        self._flusher: threading.Thread | None = None
        self._closed = threading.Event()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Observations made inside the block reach Redis together, in one call, when it ends."""
        if getattr(self._local, "pending", None) is not None:  # nested: the outer block sends
            yield
            return
        pending: Counter[str] = Counter()
        self._local.pending = pending
        self._local.offered = ()
        try:
            yield
        finally:
            self._local.pending = None
            self._send(pending)

    def outcome(self, outcome: str) -> None:
        self._add(outcome_fields(outcome))

    def retry(self, fault: str) -> None:
        self._add({f"retry{_SEP}{fault}": 1})

    def upstream(self, call: str, result: str, seconds: float) -> None:
        fields: dict[str, float] = {f"call{_SEP}{call}{_SEP}{result}": 1}
        fields.update(_histogram_fields(f"upstream.{call}", seconds, UPSTREAM_BUCKETS))
        self._add(fields)

    def webhook_delivery(self, outcome: str) -> None:
        self._add({f"delivery{_SEP}{outcome}": 1})

    def webhook_attempt(self, result: str, seconds: float) -> None:
        fields: dict[str, float] = {f"attempt{_SEP}{result}": 1}
        fields.update(_histogram_fields("webhook", seconds, UPSTREAM_BUCKETS))
        self._add(fields)

    def callback_to_terminal(self, seconds: float) -> None:
        self._add(callback_to_terminal_fields(seconds))

    def pending(self, *more: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
        """This thread's batch so far and `more`, for a flow transition to add in its own call (when it
        is made, `handed_over`); the batch keeps them until then. With `flush_every`, nothing: `more`
        joins the batch when the transition is made."""
        if self.flush_every is not None:
            self._local.offered = more
            return ()
        fields: Counter[str] = Counter(getattr(self._local, "pending", None) or {})
        for extra in more:
            fields.update(extra)
        return tuple(fields.items())

    def handed_over(self) -> None:
        """A transition added this thread's batch so far (`pending`): the batch does not send it again.
        With `flush_every`, the transition added nothing: what `pending` was offered is observed now."""
        if self.flush_every is not None:
            for extra in getattr(self._local, "offered", ()):
                self._add(dict(extra))
            self._local.offered = ()
            return
        pending: Counter[str] | None = getattr(self._local, "pending", None)
        if pending is not None:
            pending.clear()

    def flush(self) -> None:
        """Adds what the process summed since the last flush to Redis (with `flush_every`), in one call
        (lost if that fails, as a batch's is: whether Redis made it is not known)."""
        with self._lock:
            unsent, self._unsent = self._unsent, Counter()
        self._sent(unsent)

    def close(self) -> None:
        """Stops the flushing thread and flushes what is left (a worker stopping)."""
        self._closed.set()
        flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(timeout=5)
        self.flush()

    def _flush_loop(self) -> None:
        assert self.flush_every is not None
        while not self._closed.wait(self.flush_every):
            self.flush()

    def _add(self, fields: dict[str, float]) -> None:
        pending: Counter[str] | None = getattr(self._local, "pending", None)
        if pending is not None:
            pending.update(fields)
        else:
            self._send(fields)

    def _send(self, fields: Mapping[str, float]) -> None:
        if not fields:
            return
        if self.flush_every is None:
            self._sent(fields)
            return
        with self._lock:
            self._unsent.update(fields)
            if self._flusher is None and not self._closed.is_set():
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="oktopost-metrics-flush", daemon=True
                )
                self._flusher.start()

    def _sent(self, fields: Mapping[str, float]) -> None:
        if not fields:
            return
        flat: list[str] = []
        for name, amount in fields.items():
            flat += [name, repr(amount)]
        try:
            self._add_script(keys=[self.key], args=flat)
        except redis.RedisError as error:  # metrics never break a flow
            log.debug("metrics not recorded: %s", type(error).__name__)


def outcome_fields(outcome: str) -> dict[str, float]:
    """A flow ended (or skipped) by a task, by outcome or code."""
    return {f"outcome{_SEP}{outcome}": 1}


def callback_to_terminal_fields(seconds: float) -> dict[str, float]:
    """An observation of the time from a flow's callback to its terminal event."""
    return _histogram_fields("flow", seconds, FLOW_BUCKETS)


def _histogram_fields(name: str, value: float, buckets: Iterable[float]) -> dict[str, float]:
    """Count, sum and the one bucket (the least bound >= value) a histogram observation adds to."""
    bucket = next((str(bound) for bound in buckets if value <= bound), _INF)
    return {
        f"h{_SEP}{name}{_SEP}count": 1,
        f"h{_SEP}{name}{_SEP}sum": float(value),
        f"h{_SEP}{name}{_SEP}b={bucket}": 1,
    }


class RedisMetricsCollector(Collector):
    """Reads the workers' hash at scrape time."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.redis: Any = client
        self.key = key

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        try:
            raw = self.redis.hgetall(self.key)
        except redis.RedisError:
            return
        fields = {text(k): float(text(v)) for k, v in raw.items()}
        outcomes = CounterMetricFamily("okc_worker_outcomes", "Task outcomes by code", labels=["outcome"])
        retries = CounterMetricFamily(
            "okc_worker_retries", "Attempts retried by transient fault", labels=["fault"]
        )
        calls = CounterMetricFamily(
            "okc_worker_upstream_calls", "Calls made to Oktopost", labels=["call", "result"]
        )
        deliveries = CounterMetricFamily(
            "okc_webhook_deliveries", "Webhook deliveries ended, by outcome", labels=["outcome"]
        )
        attempts = CounterMetricFamily(
            "okc_webhook_attempts", "Webhook delivery attempts, by result", labels=["result"]
        )
        histograms: dict[str, dict[str, float]] = defaultdict(dict)
        for name, value in fields.items():
            parts = name.split(_SEP)
            if parts[0] == "outcome":
                outcomes.add_metric([parts[1]], value)
            elif parts[0] == "retry":
                retries.add_metric([parts[1]], value)
            elif parts[0] == "delivery":
                deliveries.add_metric([parts[1]], value)
            elif parts[0] == "attempt":
                attempts.add_metric([parts[1]], value)
            elif parts[0] == "call":
                calls.add_metric([parts[1], parts[2]], value)
            elif parts[0] == "h":
                histograms[parts[1]][parts[2]] = value
        yield outcomes
        yield retries
        yield calls
        yield deliveries
        yield attempts
        yield from _histogram_families(histograms)


def _histogram_families(histograms: dict[str, dict[str, float]]) -> Iterator[HistogramMetricFamily]:
    """The histograms read back, one family per metric: each call a sample set of the upstream one (a
    second family of the same name would be a second HELP line, which Prometheus's text format refuses)."""
    upstream = HistogramMetricFamily(
        "okc_worker_upstream_seconds", "Latency of calls to Oktopost", labels=["call"]
    )
    for name, values in sorted(histograms.items()):
        if name == "webhook":
            family = HistogramMetricFamily(
                "okc_webhook_attempt_seconds", "Time of a webhook delivery attempt"
            )
            yield _histogram(family, [], values, UPSTREAM_BUCKETS)
        elif name == "flow":
            family = HistogramMetricFamily(
                "okc_worker_callback_to_terminal_seconds", "Time from callback to terminal event"
            )
            yield _histogram(family, [], values, FLOW_BUCKETS)
        else:
            _histogram(upstream, [name.removeprefix("upstream.")], values, UPSTREAM_BUCKETS)
    if upstream.samples:
        yield upstream


class WorkersCollector(Collector):
    """How many workers are consuming, and how many serve each kind of task, from the marks their
    sweepers keep in Redis (on Redis's clock)."""

    def __init__(self, client: redis.Redis, names: RedisNames) -> None:
        self.redis: Any = client
        self.keys = [names.workers, *(names.queue_workers(queue) for queue in QUEUE_KINDS)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            seconds, microseconds = self.redis.time()
            fresh_since = int(seconds) + int(microseconds) / 1e6 - WORKER_FRESH_SECONDS
            with self.redis.pipeline(transaction=False) as pipe:
                for key in self.keys:
                    pipe.zrangebyscore(key, fresh_since, "+inf")
                every, *marked = [set(members) for members in pipe.execute()]
        except redis.RedisError:
            return
        yield GaugeMetricFamily(
            "okc_workers_consuming",
            f"Workers that showed they are consuming tasks within the last {WORKER_FRESH_SECONDS:g} s",
            value=len(every),
        )
        # a worker of a version before the marks by kind serves both, as a worker does unless told otherwise
        unmarked = every.difference(*marked)
        serving = [len(members | unmarked) for members in marked]
        queues = GaugeMetricFamily(
            "okc_queue_workers",
            f"Workers that showed they are consuming one kind of task (flows, deliveries) within the last"
            f" {WORKER_FRESH_SECONDS:g} s",
            labels=["queue"],
        )
        for queue, count in zip(QUEUE_KINDS, serving, strict=True):
            queues.add_metric([queue], count)
        yield queues


def _histogram(
    family: HistogramMetricFamily, labels: list[str], values: dict[str, float], buckets: Iterable[float]
) -> HistogramMetricFamily:
    counts, below = [], 0.0
    for bound in buckets:  # cumulative: each bucket counts every observation at or below its bound
        below += values.get(f"b={bound}", 0.0)
        counts.append((str(bound), below))
    counts.append((_INF, values.get("count", 0.0)))
    family.add_metric(labels, counts, values.get("sum", 0.0))
    return family
