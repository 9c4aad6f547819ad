"""The trend detector: one product's window state at a day close -> a TrendChange or None.

Rule ``volume-v1`` (README, "Trend rule"), evaluated at the close of every UTC day ``D``:

* recent window = the last ``recent_days`` days up to ``D``; baseline = the
  ``baseline_days`` before it;
* volume ratio = (recent reviews per day) / (baseline reviews per day), both shrunk
  toward the product's pooled rate by ``prior_reviews`` pseudo-reviews, so that a few
  reviews cannot make an extreme ratio;
* trend index = ln(volume ratio) + ``text_weight`` * (mean text score in the recent
  window - 0.5); the effective ratio exp(trend index) is compared with the thresholds;
* hysteresis: stable -> rising at >= ``rise_enter_ratio``, rising -> stable below
  ``rise_exit_ratio``; stable -> falling at <= ``fall_enter_ratio``, falling -> stable
  above ``fall_exit_ratio``; a crossing of the opposite enter threshold flips directly;
* no transition at all while the window holds fewer than ``min_reviews`` reviews;
* predicted fall = max(0, 1 - exp(trend index)): the relative fall of the review rate
  the detector expects; a falling call with predicted fall >= ``sharp_drop_fall`` (and
  at least ``sharp_drop_min_reviews`` reviews in the window) is a sharp-drop alert.

Pure: no clock, no Kafka. The same code runs in the worker and the backtest.
"""

from __future__ import annotations

import math
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stream.events import TrendChange, TrendSignals, from_ms, trend_event_id
from stream.windows import ProductState, Review, day_start_ms


class DetectorParams(BaseModel):
    """Detector thresholds; stored in the model manifest, overridable by settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = "volume-v1"
    recent_days: int = Field(30, ge=1, le=365)
    baseline_days: int = Field(60, ge=1, le=730)
    min_reviews: int = Field(20, ge=1)
    prior_reviews: float = Field(2.0, ge=0)
    rise_enter_ratio: float = Field(1.6, gt=1)
    rise_exit_ratio: float = Field(1.25, gt=0)
    fall_enter_ratio: float = Field(0.6, gt=0, lt=1)
    fall_exit_ratio: float = Field(0.8, gt=0)
    text_weight: float = 0.0
    quiet_days: int = Field(14, ge=1)
    sharp_drop_fall: float = Field(0.6, gt=0, le=1)
    sharp_drop_min_reviews: int = Field(30, ge=1)

    @model_validator(mode="after")
    def _hysteresis(self) -> DetectorParams:
        if not (self.fall_enter_ratio <= self.fall_exit_ratio <= self.rise_exit_ratio
                <= self.rise_enter_ratio):
            msg = ("need fall_enter <= fall_exit <= rise_exit <= rise_enter, got "
                   f"{self.fall_enter_ratio}, {self.fall_exit_ratio}, {self.rise_exit_ratio}, "
                   f"{self.rise_enter_ratio}")
            raise ValueError(msg)
        return self

    @property
    def lookback_days(self) -> int:
        return self.recent_days + self.baseline_days


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def signals_at(state: ProductState, day: int, params: DetectorParams) -> TrendSignals:
    """The detector's inputs for the window ending with day ``day``."""
    recent = state.reviews_between(day - params.recent_days + 1, day)
    baseline = state.reviews_between(day - params.lookback_days + 1, day - params.recent_days)
    r_days, b_days, total_days = params.recent_days, params.baseline_days, params.lookback_days
    r_rate = (len(recent) + params.prior_reviews * r_days / total_days) / r_days
    b_rate = (len(baseline) + params.prior_reviews * b_days / total_days) / b_days
    ratio = r_rate / b_rate if b_rate > 0 else (math.inf if r_rate > 0 else 1.0)
    score_recent = _mean([r[2] for r in recent if r[2] is not None])
    text_term = params.text_weight * ((score_recent if score_recent is not None else 0.5) - 0.5)
    index = (math.log(ratio) if 0 < ratio < math.inf else (50.0 if ratio else -50.0)) + text_term
    last = max((d for d in state.buckets if d <= day), default=None)
    return TrendSignals(
        recent_count=len(recent), baseline_count=len(baseline),
        recent_rate_per_day=len(recent) / r_days, baseline_rate_per_day=len(baseline) / b_days,
        volume_ratio=round(ratio, 6) if ratio < math.inf else 1e9,
        mean_score_recent=score_recent,
        mean_score_baseline=_mean([r[2] for r in baseline if r[2] is not None]),
        mean_rating_recent=_mean([r[3] for r in recent if r[3] is not None]),
        mean_rating_baseline=_mean([r[3] for r in baseline if r[3] is not None]),
        trend_index=round(index, 6),
        days_since_last_review=None if last is None else day - last,
    )


def next_state(current: str, signals: TrendSignals, params: DetectorParams) -> str:
    """Apply the hysteresis rule to one evaluation."""
    if signals.recent_count + signals.baseline_count < params.min_reviews:
        return current
    x = math.exp(signals.trend_index)
    if x >= params.rise_enter_ratio and current != "rising":
        return "rising"
    if x <= params.fall_enter_ratio and current != "falling":
        return "falling"
    if current == "rising" and x < params.rise_exit_ratio:
        return "stable"
    if current == "falling" and x > params.fall_exit_ratio:
        return "stable"
    return current


def predicted_fall(signals: TrendSignals) -> float:
    """The relative fall of the review rate the detector expects (0 when it expects none)."""
    return round(max(0.0, 1.0 - math.exp(signals.trend_index)), 6)


def is_sharp_drop(new_state: str, signals: TrendSignals, params: DetectorParams) -> bool:
    """A falling call steep enough, on enough reviews, to alert on."""
    return (new_state == "falling" and predicted_fall(signals) >= params.sharp_drop_fall
            and signals.recent_count + signals.baseline_count >= params.sharp_drop_min_reviews)


def evidence(reviews: list[Review], new_state: str, k: int) -> list[str]:
    """Top-k review_ids by their weight toward the new state (ties by review_id)."""
    def weight(r: Review) -> float:
        s = 0.5 if r[2] is None else r[2]
        return {"rising": s - 0.5, "falling": 0.5 - s}.get(new_state, abs(s - 0.5))
    return [r[0] for r in sorted(reviews, key=lambda r: (-weight(r), r[0]))[:k]]


def evaluate_day(state: ProductState, day: int, params: DetectorParams, *, model_id: str,
                 evidence_k: int) -> TrendChange | None:
    """Evaluate the close of ``day``; update ``state.trend``; return the change, if any."""
    signals = signals_at(state, day, params)
    new = next_state(state.trend, signals, params)
    if new == state.trend:
        return None
    previous, state.trend = state.trend, new
    window_start, window_end = window_bounds(day, params)
    recent = state.reviews_between(day - params.recent_days + 1, day)
    return TrendChange(
        event_id=trend_event_id(product_id=state.product_id, previous_state=previous,
                                new_state=new, window_end=window_end, model_id=model_id,
                                detector_version=params.version),
        product_id=state.product_id, previous_state=previous, new_state=new,
        window_start=window_start, window_end=window_end,
        is_quiet=signals.days_since_last_review is None
        or signals.days_since_last_review >= params.quiet_days,
        signals=signals, evidence_review_ids=evidence(recent, new, evidence_k),
        model_id=model_id, detector_version=params.version,
        predicted_fall=predicted_fall(signals),
        is_sharp_drop=is_sharp_drop(new, signals, params))


def close_through(state: ProductState, day: int, params: DetectorParams, *, model_id: str,
                  evidence_k: int) -> list[TrendChange]:
    """Evaluate every not-yet-evaluated day up to ``day``; evict what no window needs.

    Days whose window holds no review cannot change the state (``min_reviews`` >= 1) and
    are skipped.
    """
    changes = []
    d = _first_day_to_evaluate(state)
    while d <= day:
        state.evict_before(d - params.lookback_days + 1)
        if not any(b <= d for b in state.buckets):
            d = min([b for b in state.buckets if b <= day], default=day + 1)
            continue
        change = evaluate_day(state, d, params, model_id=model_id, evidence_k=evidence_k)
        if change is not None:
            changes.append(change)
        d += 1
    state.evaluated_through_day = max(day, state.evaluated_through_day or day)
    return changes


def _first_day_to_evaluate(state: ProductState) -> int:
    if state.evaluated_through_day is not None:
        return state.evaluated_through_day + 1
    return min(state.buckets, default=state.last_review_day or 0)


def window_bounds(day: int, params: DetectorParams) -> tuple[datetime, datetime]:
    """Start and end (exclusive) of the window evaluated at the close of ``day``."""
    return (from_ms(day_start_ms(day - params.lookback_days + 1)), from_ms(day_start_ms(day + 1)))
