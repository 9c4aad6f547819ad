"""CloudEvents binary-mode headers: one exact mapping per output contract."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from stream.cloudevents import Binding, headers, source_of
from stream.events import ReviewScore, TrendState, dead_letter
from stream.settings import Settings
from stream.trends import DetectorParams, close_through
from stream.windows import ProductState

TS = datetime(2017, 1, 2, 3, 4, 5, tzinfo=UTC)


def _decoded(found: list[tuple[str, bytes]]) -> dict[str, str]:
    assert all(isinstance(v, bytes) for _, v in found)
    assert len({k for k, _ in found}) == len(found)
    return {k: v.decode() for k, v in found}


def _sha32(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def test_review_score_id_is_review_and_model_and_time_is_the_review_time() -> None:
    """ce_id hashes review_id and model_id; ce_time is the review's ts."""
    score = ReviewScore(review_id="r1", product_id="p1", ts=TS, score=0.5, is_text_used=True,
                        unk_ratio=0.0, n_tokens=3, is_truncated=False, content_sha256="ab" * 8,
                        model_id="m1", source_partition=0, source_offset=0)
    got = _decoded(headers("review-score", score.to_bytes(), source="/trendstream/app"))
    assert got == {"ce_specversion": "1.0", "ce_id": _sha32("r1", "m1"),
                   "ce_source": "/trendstream/app", "ce_type": "io.trendstream.review.scored.v1",
                   "ce_time": "2017-01-02T03:04:05Z",
                   "ce_dataschema": "urn:trendstream:schema:review-score:v1",
                   "content-type": "application/json"}


def test_trend_change_alert_and_state_carry_their_own_ids_and_times() -> None:
    """A TrendChange's ce_id is its event_id, an alert's its alert_id (time: window_end);
    a TrendState's a hash of its change's event_id (time: since)."""
    state = ProductState("p1", 0)
    for day in range(180):
        for i in range(2):
            state.add((f"r{day}-{i}", "h", 0.5, 4.0), 17_167 + day)
    out = close_through(state, 17_167 + 400, DetectorParams(), model_id="m", evidence_k=3)
    change, alert = out.changes[-1], out.alerts[0]
    got = _decoded(headers("trend-change", change.to_bytes(), source="/s"))
    assert (got["ce_id"], got["ce_type"], got["ce_time"]) == (
        change.event_id, "io.trendstream.trend.changed.v1", "2017-07-13T00:00:00Z")
    got = _decoded(headers("sharp-drop-alert", alert.to_bytes(), source="/s"))
    assert (got["ce_id"], got["ce_type"], got["ce_time"], got["ce_dataschema"]) == (
        alert.alert_id, "io.trendstream.trend.sharp_drop.v1", "2017-07-19T00:00:00Z",
        "urn:trendstream:schema:sharp-drop-alert:v1")
    state = TrendState.from_change(change)  # the trend-state record of that change
    got = _decoded(headers("trend-state", state.to_bytes(), source="/s"))
    assert (got["ce_id"], got["ce_type"], got["ce_time"]) == (
        _sha32("trend-state", change.event_id), "io.trendstream.trend.state.v1",
        "2017-07-13T00:00:00Z")


def test_dead_letter_id_is_its_position_and_reason() -> None:
    """A dead letter's ce_id hashes topic, partition, offset and reason (the dedup key)."""
    letter = dead_letter(reason="late", detail="d", stage="aggregate", topic="t", partition=2,
                         offset=40, key=None, raw=None, max_raw_chars=10,
                         now=datetime(2026, 1, 1, tzinfo=UTC))
    got = _decoded(headers("dead-letter", letter.to_bytes(), source="/s"))
    assert (got["ce_id"], got["ce_type"], got["ce_time"]) == (
        _sha32("t", "2", "40", "late"), "io.trendstream.review.dead_lettered.v1",
        "2026-01-01T00:00:00Z")


def test_binding_maps_the_prefixed_output_topics_only() -> None:
    """Output topics get headers; the input and internal topics get None."""
    binding = Binding.from_settings(Settings(app_id="shop a/b", topic_prefix="x."))
    assert binding.source == "/trendstream/shop%20a%2Fb" == source_of("shop a/b")
    assert set(binding.contracts) == {"x.review-scores", "x.trends", "x.trend-state",
                                      "x.trend-alerts", "x.reviews-dlq"}
    assert binding.headers("x.trend-state", None) is None  # a tombstone: no event
    letter = dead_letter(reason="late", detail="d", stage="score", topic="t", partition=0,
                         offset=0, key=None, raw=None, max_raw_chars=10)
    assert binding.headers("x.review-score-batches", b"[]") is None
    assert binding.headers("x.reviews", b"{}") is None
    found = _decoded(binding.headers("x.reviews-dlq", letter.to_bytes()) or [])
    assert found["ce_source"] == "/trendstream/shop%20a%2Fb"
    assert json.loads(letter.to_bytes())["schema_version"] == 1
