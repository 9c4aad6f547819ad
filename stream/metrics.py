"""Prometheus metrics of one worker process, served at ``/metrics``.

Naming follows Prometheus conventions: the ``trendstream_`` prefix, base units
(``_seconds``), ``_total`` counters, and no product_id label (unbounded cardinality).

Counters are read from :class:`~stream.stats.Stats` at scrape time (one set of
counts, so ``/stats`` and ``/metrics`` never disagree); histograms are observed per
micro-batch. Lag and backlog come from a callback the wiring provides, so this module
knows nothing about faust.

``trendstream_backlog_seconds`` is what an SRE scales on: the input lag of this worker's
partitions divided by its measured capacity (reviews per second of busy time, an
exponentially weighted average over recent micro-batches). Busy time, not wall time: an
idle worker that gets a burst still reports how long the burst takes, not infinity.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stream.stats import Stats

CONTENT_TYPE: Final = "text/plain; version=0.0.4"  # aiohttp refuses a charset here
BATCH_SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SECONDS_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                          2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS: Final = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)

# (topic, partition) -> records not yet processed, for this worker's assigned partitions
LagSource = Callable[[], dict[tuple[str, int], int]]


@dataclass
class Capacity:
    """Reviews per second of busy time, exponentially weighted over recent batches.

    ``half_life_reviews``: after this many reviews an old measurement weighs half.
    """

    half_life_reviews: float = 2000.0
    reviews: float = 0.0
    seconds: float = 0.0

    def observe(self, *, reviews: int, seconds: float) -> None:
        if reviews <= 0 or seconds <= 0:
            return
        keep = 0.5 ** (reviews / self.half_life_reviews)
        self.reviews = self.reviews * keep + reviews
        self.seconds = self.seconds * keep + seconds

    @property
    def per_second(self) -> float:
        """0.0 until a batch was measured."""
        return self.reviews / self.seconds if self.seconds > 0 else 0.0


def backlog_seconds(lag: int, per_second: float) -> float:
    """Seconds to drain ``lag`` at ``per_second``; +Inf when there is lag and no rate yet."""
    if lag <= 0:
        return 0.0
    return lag / per_second if per_second > 0 else math.inf


@dataclass
class Metrics:
    """The worker's registry: per-batch histograms plus a collector over the counters."""

    stats: Stats
    info: dict[str, str]
    is_ready: Callable[[], bool] = lambda: False
    lag: LagSource = dict
    input_topic: str = ""
    webhooks: Callable[[], dict[str, tuple[int, int]]] = dict  # name -> (sent, failed)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    capacity: Capacity = field(default_factory=Capacity)
    last_trend_event_s: float | None = None

    def __post_init__(self) -> None:
        disable_created_metrics()  # no *_created series: noise on every scrape

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, buckets=buckets, registry=self.registry)

        self.batch_size = hist("trendstream_batch_size", "reviews per scoring micro-batch",
                               BATCH_SIZE_BUCKETS)
        self.queue_wait = hist("trendstream_batch_queue_wait_seconds", "time from a "
                               "batch's first record reaching the worker to its scoring "
                               "start (batching and queueing)", SECONDS_BUCKETS)
        self.compute = hist("trendstream_batch_compute_seconds", "tokenizer + ONNX "
                            "Runtime time of one micro-batch", SECONDS_BUCKETS)
        self.tokens = hist("trendstream_batch_tokens", "tokens scored in one micro-batch",
                           TOKEN_BUCKETS)
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)  # process_start_time_seconds, memory, CPU
        PlatformCollector(registry=self.registry)

    def on_batch(self, *, size: int, queue_wait_s: float | None, compute_s: float,
                 tokens: int, busy_s: float) -> None:
        """One scoring micro-batch (``busy_s``: its whole handling time, sends included)."""
        self.batch_size.observe(size)
        if queue_wait_s is not None:
            self.queue_wait.observe(max(0.0, queue_wait_s))
        self.compute.observe(compute_s)
        self.tokens.observe(tokens)
        self.capacity.observe(reviews=size, seconds=busy_s)

    def on_trend_events(self, count: int) -> None:
        if count:
            self.last_trend_event_s = time.time()

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._counters()
        yield from self._gauges()

    def _counters(self) -> Iterator[Metric]:
        s = self.m.stats

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield counter("trendstream_reviews_consumed", "input records consumed", s.consumed)
        yield counter("trendstream_reviews_scored", "reviews scored by the model", s.scored)
        yield counter("trendstream_reviews_duplicate", "exact re-sends of a review_id "
                      "skipped (idempotent state)", s.duplicates_skipped)
        yield counter("trendstream_unknown_fields", "unknown input fields ignored",
                      s.unknown_fields)
        yield counter("trendstream_alerts_raised", "sharp-drop alerts emitted", s.alerts)
        dead = CounterMetricFamily("trendstream_reviews_dead_lettered", "records sent to "
                                   "the dead-letter topic", labels=("stage", "reason"))
        for (stage, reason), n in sorted(s.dead_by_stage.items()):
            dead.add_metric((stage, reason), n)
        yield dead
        trends = CounterMetricFamily("trendstream_trend_events", "trend changes emitted",
                                     labels=("transition",))
        for transition, n in sorted(s.trend_events.items()):
            trends.add_metric((transition.replace("->", "_to_"),), n)
        yield trends
        sent = CounterMetricFamily("trendstream_alerts_sent", "alert webhook deliveries "
                                   "that succeeded", labels=("webhook",))
        failed = CounterMetricFamily("trendstream_alerts_failed", "alert webhook "
                                     "deliveries given up after the last retry",
                                     labels=("webhook",))
        for name, (ok, bad) in sorted(self.m.webhooks().items()):
            sent.add_metric((name,), ok)
            failed.add_metric((name,), bad)
        yield sent
        yield failed

    def _gauges(self) -> Iterator[Metric]:
        m = self.m
        lag = GaugeMetricFamily("trendstream_consumer_lag", "records not yet processed, "
                                "per assigned partition", labels=("topic", "partition"))
        lags = m.lag()
        for (topic, partition), n in sorted(lags.items()):
            lag.add_metric((topic, str(partition)), n)
        yield lag
        rate = m.capacity.per_second
        input_lag = sum(n for (topic, _), n in lags.items() if topic == m.input_topic)
        yield _gauge("trendstream_throughput_reviews_per_second", "measured scoring "
                     "capacity: reviews per second of busy time (recent batches)", rate)
        yield _gauge("trendstream_backlog_seconds", "input lag / measured throughput: "
                     "seconds this worker needs to catch up", backlog_seconds(input_lag, rate))
        yield _gauge("trendstream_ready", "1 when /readyz is ready", float(m.is_ready()))
        if m.last_trend_event_s is not None:
            yield _gauge("trendstream_last_trend_event_timestamp_seconds", "unix time of "
                         "the last trend change this worker emitted", m.last_trend_event_s)
        info = GaugeMetricFamily("trendstream_info", "model and runtime of this worker",
                                 labels=tuple(sorted(m.info)))
        info.add_metric(tuple(m.info[k] for k in sorted(m.info)), 1.0)
        yield info


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def parse_names(text: str) -> set[str]:
    """Metric family names in an exposition text (for the dashboard check)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {family.name for family in text_string_to_metric_families(text)}


def sample_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one sample in an exposition text, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or all(
                    sample.labels.get(k) == v for k, v in labels.items())):
                return float(sample.value)
    return None


__all__ = ["CONTENT_TYPE", "Capacity", "Metrics", "backlog_seconds", "parse_names",
           "sample_value"]
