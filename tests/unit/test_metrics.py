"""The Prometheus exposition: names, labels, counter values from Stats, capacity, backlog."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from stream.metrics import Capacity, Metrics, backlog_seconds, parse_names, sample_value
from stream.stats import Stats


def _metrics() -> Metrics:
    stats = Stats(consumed=120, scored=110, duplicates_skipped=3, unknown_fields=7, alerts=2,
                  trend_events=Counter({"stable->rising": 4, "rising->stable": 1}),
                  dead_by_stage=Counter({("score", "invalid_json"): 6,
                                         ("aggregate", "late"): 4}))
    return Metrics(stats=stats, info={"model_id": "m1", "provider": "cpu", "variant": "int8",
                                      "guarantee": "at_least_once"},
                   is_ready=lambda: True, input_topic="reviews",
                   lag=lambda: {("reviews", 0): 300, ("reviews", 1): 100,
                                ("review-score-batches", 0): 5},
                   webhooks=lambda: {"ops": (9, 1)})


def test_counters_come_from_stats_with_prometheus_names() -> None:
    """Every counter is exposed with the _total suffix and the value Stats holds."""
    text = _metrics().render().decode()
    assert sample_value(text, "trendstream_reviews_consumed_total") == 120
    assert sample_value(text, "trendstream_reviews_scored_total") == 110
    assert sample_value(text, "trendstream_reviews_duplicate_total") == 3
    assert sample_value(text, "trendstream_unknown_fields_total") == 7
    assert sample_value(text, "trendstream_alerts_raised_total") == 2
    assert sample_value(text, "trendstream_reviews_dead_lettered_total",
                        {"stage": "score", "reason": "invalid_json"}) == 6
    assert sample_value(text, "trendstream_reviews_dead_lettered_total",
                        {"stage": "aggregate", "reason": "late"}) == 4
    assert sample_value(text, "trendstream_trend_events_total",
                        {"transition": "stable_to_rising"}) == 4
    assert sample_value(text, "trendstream_alerts_sent_total", {"webhook": "ops"}) == 9
    assert sample_value(text, "trendstream_alerts_failed_total", {"webhook": "ops"}) == 1
    assert "product_id" not in text


def test_lag_backlog_ready_and_info_gauges() -> None:
    """Lag per partition; backlog = input lag / capacity; ready and info gauges."""
    m = _metrics()
    m.on_batch(size=200, queue_wait_s=0.02, compute_s=0.5, tokens=9000, busy_s=1.0)
    text = m.render().decode()
    assert sample_value(text, "trendstream_consumer_lag",
                        {"topic": "reviews", "partition": "0"}) == 300
    assert sample_value(text, "trendstream_consumer_lag",
                        {"topic": "review-score-batches", "partition": "0"}) == 5
    assert sample_value(text, "trendstream_throughput_reviews_per_second") == 200
    assert sample_value(text, "trendstream_backlog_seconds") == 2.0  # 400 input records
    assert sample_value(text, "trendstream_ready") == 1
    assert sample_value(text, "trendstream_info", {"model_id": "m1"}) == 1
    assert sample_value(text, "trendstream_batch_size_count") == 1
    assert sample_value(text, "trendstream_batch_size_sum") == 200
    assert sample_value(text, "trendstream_batch_tokens_sum") == 9000
    assert sample_value(text, "trendstream_batch_compute_seconds_sum") == 0.5
    assert sample_value(text, "trendstream_batch_queue_wait_seconds_bucket", {"le": "0.025"}) == 1
    assert {"trendstream_batch_queue_wait_seconds", "process_start_time_seconds"} <= \
        parse_names(text)


def test_capacity_weights_recent_batches() -> None:
    """Capacity is reviews per busy second, an old batch weighing half after the half-life."""
    c = Capacity(half_life_reviews=100)
    assert c.per_second == 0.0
    c.observe(reviews=100, seconds=1.0)   # 100/s
    c.observe(reviews=100, seconds=0.25)  # 400/s; the first now weighs half
    assert c.per_second == pytest.approx((50 + 100) / (0.5 + 0.25))
    c.observe(reviews=0, seconds=1.0)  # an empty batch says nothing
    assert c.per_second == pytest.approx(200.0)


def test_backlog_seconds_edges() -> None:
    """No lag is 0 s; lag with no measured rate yet is +Inf."""
    assert backlog_seconds(0, 0.0) == 0.0
    assert backlog_seconds(50, 25.0) == 2.0
    assert math.isinf(backlog_seconds(1, 0.0))


def test_last_trend_event_gauge_appears_after_the_first_event() -> None:
    """The last-event timestamp is absent until a trend change was emitted."""
    m = _metrics()
    assert sample_value(m.render().decode(),
                        "trendstream_last_trend_event_timestamp_seconds") is None
    m.on_trend_events(0)
    assert sample_value(m.render().decode(),
                        "trendstream_last_trend_event_timestamp_seconds") is None
    m.on_trend_events(2)
    assert sample_value(m.render().decode(),
                        "trendstream_last_trend_event_timestamp_seconds") > 1.7e9
