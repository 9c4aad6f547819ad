"""The worker against the real broker: N in, N scored, the hand-computed trends, DLQ."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner

from stream.artifact import read_manifest
from stream.events import (
    DeadLetter,
    ReviewScore,
    SharpDropAlert,
    TrendChange,
    alert_id,
    trend_event_id,
)
from stream.metrics import parse_names, sample_value
from stream.replay import plan, produce
from stream.settings import REPO_ROOT, Settings
from stream.topics import ensure_topics

from .helpers import process_records, read_topic, start_worker, unique_env, wait_for

pytestmark = pytest.mark.integration
START = datetime(2017, 1, 1, tzinfo=UTC)


def _same_partition_ids(n: int, partitions: int = 6) -> list[str]:
    """Product ids that Kafka's default partitioner puts on one partition."""
    part = DefaultPartitioner()
    all_p = list(range(partitions))
    ids = [f"prod-{i}" for i in range(200)]
    target = part(ids[0].encode(), all_p, all_p)
    return [i for i in ids if part(i.encode(), all_p, all_p) == target][:n]


def _review(pid: str, day: int, i: int) -> dict[str, object]:
    return {"review_id": f"{pid}-{day:03d}-{i}", "product_id": pid,
            "ts": (START + timedelta(days=day, hours=12)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "text": f"Review {i} of day {day}: works fine.", "rating": 4, "title": None,
            "source": "test", "category": "test", "unknown_extra": "ignored"}


def _series(a: str, b: str) -> list[dict[str, object]]:
    """A: 2 reviews/day for days 0-179 then silence; B: 1 review/day for days 0-399."""
    rows = [_review(a, d, i) for d in range(180) for i in range(2)]
    rows += [_review(b, d, 0) for d in range(400)]
    return sorted(rows, key=lambda r: (str(r["ts"]), str(r["review_id"])))


def _expected(a: str, b: str, model_id: str) -> set[tuple[str, str, str, str]]:
    """Hand-computed (see tests/unit/test_trends.py): change days for A and B."""
    days = {a: [("stable", "rising", 10), ("rising", "stable", 78), ("stable", "falling", 193)],
            b: [("stable", "rising", 20), ("rising", "stable", 78)]}
    out = set()
    for pid, changes in days.items():
        for prev, new, end_day in changes:
            end = START + timedelta(days=end_day)
            out.add((pid, prev, new, trend_event_id(product_id=pid, previous_state=prev,
                                                    new_state=new, window_end=end,
                                                    model_id=model_id,
                                                    detector_version="volume-v1")))
    return out


def test_reviews_in_scores_trends_and_dead_letters_out(kafka_bootstrap: str,
                                                      tiny_model_dir: Path,
                                                      tmp_path: Path) -> None:
    """760 good reviews and 7 malformed ones: 760 scored, 7 dead-lettered, exact trend events."""
    env = unique_env(kafka_bootstrap, tiny_model_dir, TRENDSTREAM_ALLOWED_LATENESS_S="0")
    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()})
    a, b = _same_partition_ids(2)
    rows = _series(a, b)
    records = plan(rows, malformed=7, seed=3)
    scraped: list[str] = []
    stats = process_records(env, records, tmp_path / "worker.log",
                            inspect=lambda w: scraped.append(w.get_text("/metrics")))
    _check_metrics(scraped[0], stats)

    scores = [ReviewScore.model_validate_json(v) for _, _, v in
              read_topic(kafka_bootstrap, settings.topic("review-scores"))]
    assert sorted(s.review_id for s in scores) == sorted(str(r["review_id"]) for r in rows)
    assert all(0.0 <= s.score <= 1.0 for s in scores)

    dead = [DeadLetter.model_validate_json(v) for _, _, v in
            read_topic(kafka_bootstrap, settings.topic("reviews-dlq"))]
    assert Counter(d.reason for d in dead) == Counter(
        ["invalid_json", "invalid_utf8", "missing_field", "empty_text", "bad_timestamp",
         "wrong_type", "key_mismatch"])
    assert all(d.raw_sha256 and d.stage == "score" for d in dead)

    trends = read_topic(kafka_bootstrap, settings.topic("trends"))
    changes = [TrendChange.model_validate_json(v) for _, _, v in trends]
    assert all(k == c.product_id.encode() for (_, k, _), c in zip(trends, changes, strict=True))
    model_id = read_manifest(tiny_model_dir).model_id
    got = {(c.product_id, c.previous_state, c.new_state, c.event_id) for c in changes}
    assert got == _expected(a, b, model_id)
    assert len(changes) == len(got)
    # A's sharp-drop alert: the close of day 198 (tests/unit/test_trends.py), once
    alerts = [SharpDropAlert.model_validate_json(v) for _, _, v in
              read_topic(kafka_bootstrap, settings.topic("trend-alerts"))]
    assert [al.alert_id for al in alerts] == [alert_id(
        product_id=a, window_end=START + timedelta(days=199), model_id=model_id,
        detector_version="volume-v1")]
    assert stats["alerts"] == 1
    assert (stats["accepted"], stats["dead_lettered_total"], stats["duplicates_skipped"]) == \
        (760, 7, 0)
    assert stats["unknown_fields"] == 760
    assert json.dumps(stats)  # the page is JSON


def _check_metrics(text: str, stats: dict[str, object]) -> None:
    """/metrics of the finished run: the same counts as /stats, no lag, every metric the
    Grafana dashboard queries is served."""
    assert sample_value(text, "trendstream_reviews_consumed_total") == 767
    assert sample_value(text, "trendstream_reviews_scored_total") == 760
    for reason in ("invalid_json", "invalid_utf8", "missing_field", "empty_text",
                   "bad_timestamp", "wrong_type", "key_mismatch"):
        assert sample_value(text, "trendstream_reviews_dead_lettered_total",
                            {"stage": "score", "reason": reason}) == 1, reason
    transitions = {"stable_to_rising": 2, "rising_to_stable": 2, "stable_to_falling": 1}
    for transition, n in transitions.items():
        assert sample_value(text, "trendstream_trend_events_total",
                            {"transition": transition}) == n, transition
    assert sample_value(text, "trendstream_alerts_raised_total") == 1
    assert sample_value(text, "trendstream_batch_size_sum") == 767
    assert sample_value(text, "trendstream_batch_size_count") == stats["batches"]
    assert sample_value(text, "trendstream_backlog_seconds") == 0.0
    assert sample_value(text, "trendstream_ready") == 1.0
    assert sample_value(text, "trendstream_throughput_reviews_per_second") > 0
    assert sample_value(text, "trendstream_last_trend_event_timestamp_seconds") > 1.7e9
    lags = [v for name, v in _samples(text) if name == "trendstream_consumer_lag"]
    assert len(lags) == 12 and set(lags) == {0.0}  # 6 input + 6 score-batch partitions
    served = parse_names(text)  # family names: no _total, _bucket, _sum, _count
    used = {re.sub(r"_(total|bucket|sum|count)$", "", m) for m in dashboard_metrics()}
    assert used <= served, used - served
    assert {n for n in served if n.startswith("trendstream_")} <= used  # all on the board


def _samples(text: str) -> list[tuple[str, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def dashboard_metrics() -> set[str]:
    """Metric names the Grafana dashboard's queries use (histograms as _bucket/_sum/_count)."""
    dashboard = json.loads((REPO_ROOT / "deploy" / "grafana" / "trendstream.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return {m for e in exprs for m in re.findall(r"\b((?:trendstream|process)_[a-z_]+)\b", e)}


def test_restart_then_idle_ticks_turn_a_silent_product_falling(
        kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """A product alone on its partition: state survives a restart, then ticks make it fall."""
    env = unique_env(kafka_bootstrap, tiny_model_dir, TRENDSTREAM_ALLOWED_LATENESS_S="0")
    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()})
    (a,) = _same_partition_ids(1)
    rows = [r for r in _series(a, "unused") if r["product_id"] == a]
    asyncio.run(ensure_topics(settings))
    first = start_worker(env, tmp_path / "worker1.log")  # event time only: no fall without events
    try:
        first.wait_ready()
        asyncio.run(produce(settings, plan(rows, malformed=0, seed=0),
                            topic=settings.topic("reviews")))
        wait_for(lambda: (first.get("/stats") or {}).get("accepted") == len(rows),
                 timeout_s=120, what="all reviews aggregated")
    finally:
        assert first.stop() == 0, first.log_tail()
    # Wall-clock ticks are for live feeds; switched on only now that the history is in.
    ticking = {**env, "TRENDSTREAM_IDLE_TICK_INTERVAL_S": "1"}
    second = start_worker(ticking, tmp_path / "worker2.log")
    try:
        second.wait_ready()
        wait_for(lambda: (second.get("/stats") or {}).get("trend_events_total", 0) >= 1,
                 timeout_s=60, what="the falling event from a tick")
    finally:
        assert second.stop() == 0, second.log_tail()
    changes = [TrendChange.model_validate_json(v) for _, _, v in
               read_topic(kafka_bootstrap, settings.topic("trends"))]
    model_id = read_manifest(tiny_model_dir).model_id
    expected = {e for e in _expected(a, "unused", model_id) if e[0] == a}
    assert [(c.previous_state, c.new_state) for c in changes] == \
        [("stable", "rising"), ("rising", "stable"), ("stable", "falling")]
    assert {(c.product_id, c.previous_state, c.new_state, c.event_id) for c in changes} == \
        expected
    assert changes[-1].signals.days_since_last_review == 13


def _hostile(pid: str) -> list[tuple[bytes, str]]:
    """Records that once crashed the scoring agent, with the reason each must get."""
    good = _review(pid, 0, 99)
    def raw(**changes: object) -> bytes:
        return json.dumps({**good, **changes}).encode()
    return [(b"[" * 5000 + b"]" * 5000, "invalid_json"),
            (raw(extra=0).replace(b'"extra": 0', b'"extra": ' + b"9" * 5000), "invalid_json"),
            (raw(rating=10 ** 400), "wrong_type"),
            (raw(text="lone \ud800 surrogate"), "invalid_utf8"),
            (raw(ts="0001-01-01T00:00:00+01:00"), "ts_out_of_range"),
            (raw(ts="9999-12-31T23:59:59Z"), "ts_out_of_range")]


def test_hostile_records_are_dead_lettered_and_the_worker_goes_on(
        kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Each hostile record gets its DLQ reason; the good reviews around them are all scored."""
    env = unique_env(kafka_bootstrap, tiny_model_dir)
    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()})
    (pid,) = _same_partition_ids(1)
    good = [_review(pid, d, 0) for d in range(40)]
    hostile = _hostile(pid)
    records = [(pid.encode(), json.dumps(r).encode()) for r in good[:20]]
    records += [(pid.encode(), value) for value, _ in hostile]
    records += [(pid.encode(), json.dumps(r).encode()) for r in good[20:]]
    stats = process_records(env, records, tmp_path / "worker.log", timeout_s=120)
    scores = [ReviewScore.model_validate_json(v) for _, _, v in
              read_topic(kafka_bootstrap, settings.topic("review-scores"))]
    assert sorted(s.review_id for s in scores) == sorted(str(r["review_id"]) for r in good)
    dead = [DeadLetter.model_validate_json(v) for _, _, v in
            read_topic(kafka_bootstrap, settings.topic("reviews-dlq"))]
    assert Counter(d.reason for d in dead) == Counter(reason for _, reason in hostile)
    assert (stats["accepted"], stats["dead_lettered_total"]) == (40, 6)
