"""Golden tests of the trend rule on constructed series where volume alone decides."""

from __future__ import annotations

import math
from datetime import date

import pytest

from stream.trends import DetectorParams, close_through, evidence, next_state, signals_at
from stream.windows import SCORE_STEPS, ProductState, quantize_score

BASE_DAY = 17_167  # 2017-01-01


def _steady(days: range, per_day: int, score: float = 0.5) -> ProductState:
    state = ProductState("p1", 0)
    for d in days:
        for i in range(per_day):
            state.add((f"r{d:05d}-{i}", "h", score, 4.0), BASE_DAY + d)
    return state


def test_launch_plateau_and_going_quiet_transitions_on_exact_days() -> None:
    """2 reviews/day for 180 days then silence: rising day 9, stable day 77, falling day 192."""
    state = _steady(range(180), 2)
    out = close_through(state, BASE_DAY + 400, DetectorParams(), model_id="m", evidence_k=3)
    changes = out.changes
    got = [(c.previous_state, c.new_state, (c.window_end.date() - c.window_start.date()).days,
            c.window_end.toordinal()) for c in changes]
    day = date(2017, 1, 1).toordinal()
    assert got == [("stable", "rising", 90, day + 10), ("rising", "stable", 90, day + 78),
                   ("stable", "falling", 90, day + 193)]
    falling = changes[-1]
    assert (falling.signals.recent_count, falling.signals.baseline_count) == (34, 120)
    assert falling.signals.days_since_last_review == 13
    assert falling.is_quiet is False
    # predicted fall at the call: 1 - ((34 + 2/3) / 30) / ((120 + 4/3) / 60) = 0.42857
    assert abs(falling.predicted_fall - 0.428571) < 2e-6 and falling.is_sharp_drop is False
    assert state.trend == "falling"
    assert state.buckets == {}
    # the state keeps the change that entered its trend (the product page, trend-state)
    assert (state.since_day, state.last_event_id) == (BASE_DAY + 193, falling.event_id)
    # the sharp-drop alert: first day in falling with predicted fall >= 0.6 on >= 30 reviews:
    # the close of day 198 (window end day 199): recent = days 169-179 = 22 reviews,
    # baseline days 109-168 = 120: 1 - ((22 + 2/3) / 30) / ((120 + 4/3) / 60) = 0.626
    # (day 197: 24 recent -> 0.593, below 0.6)
    [alert] = out.alerts
    assert alert.window_end.toordinal() == day + 199
    assert (alert.signals.recent_count, alert.signals.baseline_count) == (22, 120)
    assert abs(alert.predicted_fall - 0.626374) < 2e-6 and alert.trend_event_id is None


def test_quiet_flag_when_no_review_for_quiet_days() -> None:
    """A product that fell silent 14+ days before the call is marked as gone quiet."""
    params = DetectorParams(fall_enter_ratio=0.3, fall_exit_ratio=0.5)
    state = _steady(range(180), 2)
    changes = close_through(state, BASE_DAY + 400, params, model_id="m", evidence_k=3).changes
    assert changes[-1].new_state == "falling"
    assert changes[-1].is_quiet is True
    assert changes[-1].signals.days_since_last_review >= 14


def test_no_call_below_min_reviews() -> None:
    """Nineteen reviews never move a product out of stable, whatever the ratio."""
    state = _steady(range(19), 1)
    out = close_through(state, BASE_DAY + 300, DetectorParams(), model_id="m", evidence_k=3)
    assert (out.changes, out.alerts) == ([], [])
    assert state.trend == "stable"


def test_hysteresis_keeps_rising_between_exit_and_enter() -> None:
    """A ratio between rise_exit and rise_enter keeps rising and keeps stable."""
    params = DetectorParams()
    state = _steady(range(90), 1)
    sig = signals_at(state, BASE_DAY + 89, params)
    assert 0.99 < sig.volume_ratio < 1.01
    # recent 30 days at 1.5x the baseline rate: between exit 1.25 and enter 1.6
    mid = _steady(range(60), 2)
    for d in range(60, 90):
        for i in range(3):
            mid.add((f"m{d}-{i}", "h", 0.5, None), BASE_DAY + d)
    sig = signals_at(mid, BASE_DAY + 89, params)
    assert params.rise_exit_ratio < sig.volume_ratio < params.rise_enter_ratio
    assert next_state("rising", sig, params) == "rising"
    assert next_state("stable", sig, params) == "stable"


def test_text_weight_moves_the_index_and_evidence_ranks_by_weight() -> None:
    """With text_weight the mean score shifts the index; evidence is the most negative reviews."""
    params = DetectorParams(text_weight=2.0)
    state = _steady(range(90), 1, score=0.5)
    state.add(("zz-neg", "h", 0.01, 1.0), BASE_DAY + 89)
    state.add(("aa-neg", "h", 0.01, 1.0), BASE_DAY + 89)
    sig = signals_at(state, BASE_DAY + 89, params)
    assert sig.mean_score_recent is not None and sig.mean_score_recent < 0.5
    plain = signals_at(state, BASE_DAY + 89, DetectorParams())
    expected = plain.trend_index + 2.0 * (sig.mean_score_recent - 0.5)
    assert abs(sig.trend_index - expected) < 1e-5
    recent = state.reviews_between(BASE_DAY + 60, BASE_DAY + 89)
    assert evidence(recent, "falling", 3)[:2] == ["aa-neg", "zz-neg"]


def test_same_reviews_in_any_order_give_identical_events() -> None:
    """Arrival order does not change the events (means are exactly rounded sums)."""
    a, b = _steady(range(120), 2), ProductState("p1", 0)
    for day, reviews in sorted(a.buckets.items(), reverse=True):
        for r in reversed(reviews):
            b.add(r, day)
    ea = close_through(a, BASE_DAY + 300, DetectorParams(), model_id="m", evidence_k=3)
    eb = close_through(b, BASE_DAY + 300, DetectorParams(), model_id="m", evidence_k=3)
    assert [e.model_dump() for e in ea.changes] == [e.model_dump() for e in eb.changes]
    assert [c.new_state for c in ea.changes] == ["rising", "stable", "falling"]


def test_silence_end_holds_the_state_of_a_series_that_stopped() -> None:
    """silence='end': once quiet for quiet_days (10 here) the product is no longer called.

    The golden series falls on day 192, 13 days after its last review; with the default
    quiet_days of 14 that call stands (silence is only recognized after quiet_days).
    """
    params = DetectorParams(silence="end", quiet_days=10)
    out = close_through(_steady(range(180), 2), BASE_DAY + 400, params, model_id="m",
                        evidence_k=3)
    assert [c.new_state for c in out.changes] == ["rising", "stable"]
    assert out.alerts == []


def test_fitted_weights_intercept_and_shrinkage_arithmetic() -> None:
    """index = w * (b + sum) + (1 - w) * season_ahead, w = n / (n + k); flat season -> 0."""
    state = _steady(range(90), 1)
    for d in range(60, 90):
        state.add((f"x{d}", "h", 0.9, 5.0), BASE_DAY + d)  # recent: 2/day, text and stars up
    params = DetectorParams(weights={"volume": 0.5, "text": 1.0, "rating_shift": 0.1},
                            intercept=0.2, shrink_reviews=30.0)
    sig = signals_at(state, BASE_DAY + 89, params)
    f = sig.features
    assert (sig.recent_count, sig.baseline_count) == (60, 60)
    assert f["volume"] == pytest.approx(math.log((60 + 2 / 3) / 30 / ((60 + 4 / 3) / 60)), 1e-5)
    # 30 at 0.5 and 30 at 0.9, as the state stores scores (to 1/65534)
    assert f["text"] == pytest.approx((0.5 + quantize_score(0.9)) / 2 - 0.5, abs=1e-6)
    assert abs(quantize_score(0.9) - 0.9) <= 0.5 / SCORE_STEPS
    assert f["rating_shift"] == pytest.approx(4.5 - 4.0, 1e-5)
    assert f["season_ahead"] == 0.0
    raw = 0.2 + 0.5 * f["volume"] + 1.0 * f["text"] + 0.1 * f["rating_shift"]
    assert sig.trend_index == pytest.approx(120 / 150 * raw, abs=1e-5)


def test_unknown_feature_and_legacy_text_weight() -> None:
    """A manifest naming an unknown feature is refused; volume-v1's text_weight still loads."""
    with pytest.raises(ValueError, match="unknown detector features"):
        DetectorParams(weights={"volume": 1.0, "moon_phase": 1.0})
    assert DetectorParams.model_validate({"text_weight": 2.0}).weights == {"volume": 1.0,
                                                                           "text": 2.0}
