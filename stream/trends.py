"""The trend detector: one product's window state at a day close -> a TrendChange or None.

Evaluated at the close of every UTC day ``D`` (README, "Trend rule"):

* recent window = the last ``recent_days`` days up to ``D``; baseline = the
  ``baseline_days`` before it;
* features (all scale-free, so they carry over to other stores and categories):

  - ``volume``: ln(recent reviews per day / baseline reviews per day), both rates shrunk
    toward the product's pooled rate by ``prior_reviews`` pseudo-reviews, so that a few
    reviews cannot make an extreme ratio;
  - ``season_recent`` / ``season_ahead``: what the product category's seasonal profile
    alone predicts for ln(recent / baseline) and for ln(next ``horizon_days`` /
    last ``horizon_days``) (``stream.season``);
  - ``text``: mean text score of the recent window - 0.5; ``text_shift``: recent minus
    baseline mean text score; ``rating_shift``: recent minus baseline mean star rating
    (0 where a window has none);

* trend index = ``intercept`` + sum of ``weights[f] * f``: the predicted
  ln(review volume over the next ``horizon_days`` / the last ``horizon_days``).
  Low-volume products are shrunk toward their category's seasonal expectation:
  index = w * index + (1 - w) * season_ahead with w = n / (n + ``shrink_reviews``),
  n = reviews in the window. The weights, intercept, shrinkage, seasonal profiles and
  thresholds are fitted offline (``export/detector_fit.py``) and stored in the manifest;
  the defaults (``volume-v1``: weight 1 on ``volume``) are the plain momentum rule;
* hysteresis on the predicted ratio exp(index): stable -> rising at >=
  ``rise_enter_ratio``, rising -> stable below ``rise_exit_ratio``; stable -> falling at
  <= ``fall_enter_ratio``, falling -> stable above ``fall_exit_ratio``; a crossing of the
  opposite enter threshold flips directly;
* no transition at all while the window holds fewer than ``min_reviews`` reviews, nor,
  with ``silence="end"``, once a product has had no review for ``quiet_days`` (a crawled
  series that stopped is the end of observation; in a live feed, the default
  ``silence="fall"``, silence is a fall);
* predicted fall = max(0, 1 - exp(index)); a falling call with predicted fall >=
  ``sharp_drop_fall`` and at least ``sharp_drop_min_reviews`` reviews in the window is a
  sharp drop; a SharpDropAlert goes out once per falling episode, on the first day close
  in the falling state that meets it (the entering TrendChange is then flagged too).

Pure: no clock, no Kafka. The same code runs in the worker and the backtest.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stream.events import (
    SharpDropAlert,
    TrendChange,
    TrendSignals,
    alert_id,
    from_ms,
    trend_event_id,
)
from stream.season import FLAT, MONTHS, Profile, expected_log_ratio
from stream.windows import ProductState, Review, day_start_ms

if TYPE_CHECKING:
    from stream.settings import Settings

log = logging.getLogger(__name__)

FEATURES: Final = ("volume", "season_recent", "season_ahead", "text", "text_shift",
                   "rating_shift")


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
    quiet_days: int = Field(14, ge=1)
    silence: Literal["fall", "end"] = "fall"
    horizon_days: int = Field(90, ge=1, le=730)
    weights: dict[str, float] = Field(default_factory=lambda: {"volume": 1.0})
    intercept: float = 0.0
    shrink_reviews: float = Field(0.0, ge=0)
    seasons: dict[str, Profile] = Field(default_factory=dict)
    default_season: Profile | None = None
    sharp_drop_fall: float = Field(0.6, gt=0, le=1)
    sharp_drop_min_reviews: int = Field(30, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _legacy_text_weight(cls, data: Any) -> Any:
        """volume-v1 manifests stored the text weight as ``text_weight``."""
        if isinstance(data, dict) and "text_weight" in data:
            data = dict(data)
            weight = data.pop("text_weight")
            if weight:
                data["weights"] = {**data.get("weights", {"volume": 1.0}), "text": weight}
        return data

    @field_validator("weights")
    @classmethod
    def _known_features(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(FEATURES))
        if unknown:
            msg = f"unknown detector features {unknown}; known: {list(FEATURES)}"
            raise ValueError(msg)
        return weights

    @field_validator("seasons", "default_season")
    @classmethod
    def _twelve_months(cls, value: Any) -> Any:
        profiles = value.values() if isinstance(value, dict) else [] if value is None else [value]
        if any(len(p) != MONTHS for p in profiles):
            msg = f"a seasonal profile has {MONTHS} monthly levels"
            raise ValueError(msg)
        return value

    def season_of(self, category: str | None) -> Profile:
        """The category's profile, else the default, else flat."""
        found = self.seasons.get(category) if category is not None else None
        return found or self.default_season or FLAT

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


def detector_params(manifest_params: DetectorParams, settings: Settings) -> DetectorParams:
    """The manifest's thresholds with the settings' overrides applied (and logged)."""
    overrides = settings.detector_overrides()
    for name, value in overrides.items():
        log.warning("detector override %s=%s (manifest says %s)", name, value,
                    getattr(manifest_params, name))
    return DetectorParams.model_validate({**manifest_params.model_dump(), **overrides})


def _mean(values: list[float]) -> float | None:
    # fsum is exactly rounded: the mean does not depend on the order of the reviews
    return math.fsum(values) / len(values) if values else None


@dataclass(frozen=True, slots=True)
class _Means:
    score_recent: float | None
    score_baseline: float | None
    rating_recent: float | None
    rating_baseline: float | None


def _means(recent: list[Review], baseline: list[Review]) -> _Means:
    return _Means(_mean([r[2] for r in recent if r[2] is not None]),
                  _mean([r[2] for r in baseline if r[2] is not None]),
                  _mean([r[3] for r in recent if r[3] is not None]),
                  _mean([r[3] for r in baseline if r[3] is not None]))


def signals_at(state: ProductState, day: int, params: DetectorParams) -> TrendSignals:
    """The detector's inputs and its trend index for the window ending with day ``day``."""
    recent = state.reviews_between(day - params.recent_days + 1, day)
    baseline = state.reviews_between(day - params.lookback_days + 1, day - params.recent_days)
    means = _means(recent, baseline)
    features = _features(state, day, params, recent, baseline, means)
    index = params.intercept + sum(w * features[f] for f, w in params.weights.items())
    n = len(recent) + len(baseline)
    if params.shrink_reviews > 0:
        w = n / (n + params.shrink_reviews)
        index = w * index + (1 - w) * features["season_ahead"]
    index = min(50.0, max(-50.0, index))
    last = max((d for d in state.buckets if d <= day), default=None)
    return TrendSignals(
        recent_count=len(recent), baseline_count=len(baseline),
        recent_rate_per_day=len(recent) / params.recent_days,
        baseline_rate_per_day=len(baseline) / params.baseline_days,
        volume_ratio=round(math.exp(features["volume"]), 6),
        mean_score_recent=means.score_recent, mean_score_baseline=means.score_baseline,
        mean_rating_recent=means.rating_recent, mean_rating_baseline=means.rating_baseline,
        trend_index=round(index, 6),
        days_since_last_review=None if last is None else day - last,
        features={f: round(v, 6) for f, v in features.items()},
    )


def _features(state: ProductState, day: int, params: DetectorParams, recent: list[Review],
              baseline: list[Review], means: _Means) -> dict[str, float]:
    r_days, b_days, total_days = params.recent_days, params.baseline_days, params.lookback_days
    r_rate = (len(recent) + params.prior_reviews * r_days / total_days) / r_days
    b_rate = (len(baseline) + params.prior_reviews * b_days / total_days) / b_days
    if r_rate > 0 and b_rate > 0:
        volume = math.log(r_rate / b_rate)
    else:  # no prior and an empty window
        volume = 0.0 if r_rate == b_rate else (50.0 if r_rate > 0 else -50.0)
    profile = params.season_of(state.category)
    h = params.horizon_days
    score_r, score_b = means.score_recent, means.score_baseline
    rating_r, rating_b = means.rating_recent, means.rating_baseline
    return {
        "volume": volume,
        "season_recent": expected_log_ratio(profile, (day - r_days + 1, day),
                                            (day - total_days + 1, day - r_days)),
        "season_ahead": expected_log_ratio(profile, (day + 1, day + h), (day - h + 1, day)),
        "text": 0.0 if score_r is None else score_r - 0.5,
        "text_shift": 0.0 if score_r is None or score_b is None else score_r - score_b,
        "rating_shift": 0.0 if rating_r is None or rating_b is None else rating_r - rating_b,
    }


def next_state(current: str, signals: TrendSignals, params: DetectorParams) -> str:
    """Apply the hysteresis rule to one evaluation."""
    if signals.recent_count + signals.baseline_count < params.min_reviews:
        return current
    quiet = signals.days_since_last_review
    if params.silence == "end" and (quiet is None or quiet >= params.quiet_days):
        return current  # the series stopped: end of observation, not a fall
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


@dataclass(slots=True)
class Outputs:
    """What evaluating one or more day closes produced."""

    changes: list[TrendChange] = field(default_factory=list)
    alerts: list[SharpDropAlert] = field(default_factory=list)

    def extend(self, other: Outputs) -> None:
        self.changes += other.changes
        self.alerts += other.alerts


def evaluate_day(state: ProductState, day: int, params: DetectorParams, *, model_id: str,
                 evidence_k: int) -> Outputs:
    """Evaluate the close of ``day``; update the state; return the change and alert, if any."""
    out = Outputs()
    signals = signals_at(state, day, params)
    new = next_state(state.trend, signals, params)
    window_start, window_end = window_bounds(day, params)
    recent = state.reviews_between(day - params.recent_days + 1, day)
    change_id = None
    if new != state.trend:
        previous, state.trend = state.trend, new
        state.is_alerted = False
        change_id = trend_event_id(product_id=state.product_id, previous_state=previous,
                                   new_state=new, window_end=window_end, model_id=model_id,
                                   detector_version=params.version)
        state.since_day, state.last_event_id = day + 1, change_id  # day + 1: window_end
        out.changes.append(TrendChange(
            event_id=change_id, product_id=state.product_id, previous_state=previous,
            new_state=new, window_start=window_start, window_end=window_end,
            is_quiet=signals.days_since_last_review is None
            or signals.days_since_last_review >= params.quiet_days,
            signals=signals, evidence_review_ids=evidence(recent, new, evidence_k),
            model_id=model_id, detector_version=params.version,
            predicted_fall=predicted_fall(signals),
            is_sharp_drop=is_sharp_drop(new, signals, params)))
    if not state.is_alerted and is_sharp_drop(state.trend, signals, params):
        state.is_alerted = True
        out.alerts.append(SharpDropAlert(
            alert_id=alert_id(product_id=state.product_id, window_end=window_end,
                              model_id=model_id, detector_version=params.version),
            product_id=state.product_id, window_start=window_start, window_end=window_end,
            predicted_fall=predicted_fall(signals), threshold=params.sharp_drop_fall,
            signals=signals, evidence_review_ids=evidence(recent, "falling", evidence_k),
            trend_event_id=change_id, model_id=model_id, detector_version=params.version))
    return out


def close_through(state: ProductState, day: int, params: DetectorParams, *, model_id: str,
                  evidence_k: int) -> Outputs:
    """Evaluate every not-yet-evaluated day up to ``day``; evict what no window needs.

    Days whose window holds no review cannot change the state (``min_reviews`` >= 1) and
    are skipped.
    """
    out = Outputs()
    d = _first_day_to_evaluate(state)
    while d <= day:
        state.evict_before(d - params.lookback_days + 1)
        if not any(b <= d for b in state.buckets):
            d = min([b for b in state.buckets if b <= day], default=day + 1)
            continue
        out.extend(evaluate_day(state, d, params, model_id=model_id, evidence_k=evidence_k))
        d += 1
    state.evaluated_through_day = max(day, state.evaluated_through_day or day)
    return out


def _first_day_to_evaluate(state: ProductState) -> int:
    if state.evaluated_through_day is not None:
        return state.evaluated_through_day + 1
    return min(state.buckets, default=state.last_review_day or 0)


def window_bounds(day: int, params: DetectorParams) -> tuple[datetime, datetime]:
    """Start and end (exclusive) of the window evaluated at the close of ``day``."""
    return (from_ms(day_start_ms(day - params.lookback_days + 1)), from_ms(day_start_ms(day + 1)))
