"""Fit the product-level detector offline; the worker uses the result unchanged.

What is fitted (README, "Trend rule"), all from the export's review file:

1. seasonal profiles per category (``stream.season``) from reviews before the
   validation period; a category is given one only when every calendar month is covered
   in at least ``min_season_years`` different years (detrended: each month against the
   product's centred 13-month mean) and it holds at least
   ``min_season_reviews`` reviews; others use the flat profile (no seasonality);
2. the feature weights: ridge regression of the realized
   ``ln((volume in (D, D+H] + 1) / (volume in (D-H, D] + 1))`` on the detector's own
   features (``stream.trends.signals_at``), over product-days ``D`` on a weekly grid whose
   outcome ends before the validation period ("fit" samples). Several feature sets are
   tried; the one with the lowest validation error wins, and every candidate's numbers
   go into the report, so what the text and rating features add is measured, not assumed;
3. the shrinkage toward the category (``shrink_reviews``), by validation error;
4. the thresholds, on the validation samples only (outcome ending inside the validation
   period): the falling (rising) enter ratio with the best precision for a >= 20 % fall
   (>= 25 % rise) among those that flag at least as many product-days as the momentum rule
   does there; exits halfway to 1 (geometric mean); the sharp-drop level = the lowest
   predicted fall whose calls were right >= ``sharp_drop_precision`` of the time.

Pure numpy and scikit-learn; no torch (the text scores are passed in).
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

import numpy as np
from sklearn.linear_model import Ridge

from export.data import SECONDS_PER_DAY, ObservationEnd, ReviewTable
from export.errors import DataError
from stream.season import MONTHS, Profile, centred, month_index
from stream.trends import DetectorParams, signals_at
from stream.windows import ProductState

log = logging.getLogger(__name__)

VERSION: Final = "trend-v2"
_EPOCH: Final = date(1970, 1, 1)
CANDIDATES: Final = {
    "volume": ("volume",),
    "volume+season": ("volume", "season_recent", "season_ahead"),
    "volume+season+rating": ("volume", "season_recent", "season_ahead", "rating_shift"),
    "volume+season+text": ("volume", "season_recent", "season_ahead", "text", "text_shift"),
    "all": ("volume", "season_recent", "season_ahead", "rating_shift", "text", "text_shift"),
}
FALL_OUTCOME: Final = 0.8  # a >= 20 % fall
RISE_OUTCOME: Final = 1.25  # a >= 25 % rise


@dataclass(frozen=True, slots=True)
class FitOptions:
    """Knobs of the offline fit (defaults documented in the module docstring)."""

    horizon_days: int = 90
    observation_end: ObservationEnd = "product"
    grid_days: int = 7
    ridge_alpha: float = 3.0
    shrink_grid: tuple[float, ...] = (0.0, 10.0, 30.0, 100.0)
    min_season_reviews: int = 1000
    min_season_years: int = 2
    sharp_drop_precision: float = 0.8
    min_validation_samples: int = 30


@dataclass(frozen=True, slots=True)
class Samples:
    """Product-days: features, outcome, and which set each belongs to."""

    features: dict[str, np.ndarray]
    outcome: np.ndarray  # ln((after + 1) / (before + 1))
    before: np.ndarray
    after: np.ndarray
    n_window: np.ndarray  # reviews in the detector's window (recent + baseline)
    momentum_ratio: np.ndarray  # unshrunk (recent 30 d rate) / (baseline 60 d rate)
    is_fit: np.ndarray
    is_validation: np.ndarray


def _day(ts_s: np.ndarray) -> np.ndarray:
    return ts_s // SECONDS_PER_DAY


def product_states(table: ReviewTable, scores: np.ndarray) -> dict[str, ProductState]:
    """Every product's full history as a worker state (no eviction); NaN score = unscored."""
    states: dict[str, ProductState] = {}
    categories: dict[str, Counter[str]] = defaultdict(Counter)
    for i, day in enumerate(_day(table.ts_s).tolist()):
        pid = str(table.product_id[i])
        state = states.setdefault(pid, ProductState(pid, partition=0))
        score = None if math.isnan(scores[i]) else float(scores[i])
        rating = None if math.isnan(table.rating[i]) else float(table.rating[i])
        state.add((str(table.review_id[i]), "", score, rating), int(day))
        if table.category[i]:
            categories[pid][str(table.category[i])] += 1
    for pid, counts in categories.items():
        states[pid].category = counts.most_common(1)[0][0]
    return states


def fit_seasons(table: ReviewTable, *, before_day: int,
                options: FitOptions) -> dict[str, Profile]:
    """Per-category monthly profiles from reviews before ``before_day`` (see module doc)."""
    days = _day(table.ts_s)
    keep = days < before_day
    months = np.array([month_index(int(d)) for d in days[keep]])
    years = np.array([(_EPOCH + timedelta(days=int(d))).year for d in days[keep]])
    per_product: dict[tuple[str, str], Counter[int]] = defaultdict(Counter)
    for cat, pid, m, y in zip(table.category[keep], table.product_id[keep], months, years,
                              strict=True):
        if cat:
            per_product[(str(cat), str(pid))][int(y) * MONTHS + int(m)] += 1
    levels: dict[str, list[list[float]]] = defaultdict(lambda: [[] for _ in range(MONTHS)])
    totals: Counter[str] = Counter()
    years: dict[str, list[set[int]]] = defaultdict(lambda: [set() for _ in range(MONTHS)])
    for (cat, _pid), counts in per_product.items():
        totals[cat] += sum(counts.values())
        for month, level in _detrended_levels(counts).items():
            levels[cat][month % MONTHS].append(level)
            years[cat][month % MONTHS].add(month // MONTHS)
    seasons = {}
    for cat, by_month in levels.items():
        covered = min(len(y) for y in years[cat])
        if totals[cat] < options.min_season_reviews or covered < options.min_season_years:
            log.info("season category=%s reviews=%d: every calendar month seen in >= %d "
                     "years? min is %d: flat profile", cat, totals[cat],
                     options.min_season_years, covered)
            continue
        seasons[cat] = centred([float(np.mean(v)) for v in by_month])
        log.info("season category=%s profile=%s", cat, seasons[cat])
    return seasons


def _detrended_levels(counts: Counter[int]) -> dict[int, float]:
    """Absolute month -> ln(count) minus the product's centred 13-month mean of ln(count).

    Months between the product's first and last review count as 0 when empty. Only months
    with a full 13-month neighbourhood inside that span are used, so a launch ramp or a
    fade-out is not mistaken for a season.
    """
    first, last = min(counts), max(counts)
    logs = {m: math.log(counts.get(m, 0) + 0.5) for m in range(first, last + 1)}
    levels = {}
    for m in range(first + 6, last - 5):
        neighbourhood = [logs[k] for k in range(m - 6, m + 7)]
        levels[m] = logs[m] - sum(neighbourhood) / len(neighbourhood)
    return levels


def build_samples(states: dict[str, ProductState], span_end_day: dict[str, int],
                  params: DetectorParams, *, val_start_day: int, test_start_day: int,
                  options: FitOptions) -> Samples:
    """Product-days on the weekly grid with a complete outcome window inside the span."""
    h = options.horizon_days
    rows: list[tuple[dict[str, float], int, int, float, bool, bool, int]] = []
    for pid in sorted(states):
        state = states[pid]
        days = sorted(d for d, b in state.buckets.items() for _ in b)
        first, end = days[0], span_end_day[pid]
        arr = np.array(days)
        start = first + h + (-(first + h)) % options.grid_days
        for d in range(start, end - h + 1, options.grid_days):
            n_window = int(np.searchsorted(arr, d, "right")
                           - np.searchsorted(arr, d - params.lookback_days, "right"))
            if n_window < params.min_reviews:
                continue
            before = int(np.searchsorted(arr, d, "right") - np.searchsorted(arr, d - h, "right"))
            after = int(np.searchsorted(arr, d + h, "right") - np.searchsorted(arr, d, "right"))
            sig = signals_at(state, d, params)
            momentum = (sig.recent_rate_per_day / sig.baseline_rate_per_day
                        if sig.baseline_rate_per_day > 0 else math.inf)
            is_fit = d + h < val_start_day
            is_val = val_start_day <= d + h <= test_start_day
            rows.append((sig.features, before, after, momentum, is_fit, is_val, n_window))
    if not rows:
        raise DataError("no product-day has a complete outcome window; the detector cannot be "
                        "fitted on this data (need longer series)")
    names = list(rows[0][0])
    return Samples(
        features={f: np.array([r[0][f] for r in rows]) for f in names},
        before=np.array([r[1] for r in rows]), after=np.array([r[2] for r in rows]),
        outcome=np.log((np.array([r[2] for r in rows]) + 1) / (np.array([r[1] for r in rows]) + 1)),
        n_window=np.array([r[6] for r in rows]), momentum_ratio=np.array([r[3] for r in rows]),
        is_fit=np.array([r[4] for r in rows]), is_validation=np.array([r[5] for r in rows]))


def _design(samples: Samples, names: tuple[str, ...], rows: np.ndarray) -> np.ndarray:
    return np.column_stack([samples.features[f][rows] for f in names])


def fit_weights(samples: Samples, names: tuple[str, ...], *,
                alpha: float) -> tuple[dict[str, float], float]:
    """Ridge on standardized features (fit samples); weights returned in raw units."""
    x = _design(samples, names, samples.is_fit)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    model = Ridge(alpha=alpha).fit((x - mean) / scale, samples.outcome[samples.is_fit])
    weights = model.coef_ / scale
    intercept = float(model.intercept_ - (weights * mean).sum())
    return {f: round(float(w), 6) for f, w in zip(names, weights, strict=True)}, \
        round(intercept, 6)


def predicted_index(samples: Samples, weights: dict[str, float], intercept: float,
                    shrink: float, n_window: np.ndarray) -> np.ndarray:
    """The detector's trend index for every sample (same arithmetic as signals_at)."""
    index = intercept + sum(w * samples.features[f] for f, w in weights.items())
    if shrink > 0:
        w = n_window / (n_window + shrink)
        index = w * index + (1 - w) * samples.features["season_ahead"]
    return np.clip(index, -50, 50)


def _precision(flagged: np.ndarray, right: np.ndarray) -> float | None:
    return float(right[flagged].mean()) if flagged.any() else None


def choose_threshold(ratio: np.ndarray, right: np.ndarray, reference_count: int, *,
                     candidates: np.ndarray, below: bool) -> tuple[float, dict[str, Any]]:
    """Best-precision enter ratio among those flagging >= ``reference_count`` samples."""
    best: tuple[float, int, float] | None = None
    for c in candidates:
        flagged = ratio <= c if below else ratio >= c
        n = int(flagged.sum())
        if n < max(reference_count, 1):
            continue
        p = float(right[flagged].mean())
        if best is None or p > best[0] + 1e-12:
            best = (p, n, float(c))
    if best is None:  # nothing flags enough: take the most permissive candidate
        c = float(candidates.max() if below else candidates.min())
        flagged = ratio <= c if below else ratio >= c
        return c, {"precision": _precision(flagged, right), "flagged": int(flagged.sum()),
                   "note": "no candidate flags as many samples as the momentum rule"}
    return best[2], {"precision": best[0], "flagged": best[1]}


def fit_detector(table: ReviewTable, scores: np.ndarray, *, val_start_s: int,
                 test_start_s: int, base: DetectorParams | None = None,
                 options: FitOptions = FitOptions()) -> tuple[DetectorParams, dict[str, Any]]:
    """Fit seasons, weights, shrinkage and thresholds; return params and a report."""
    base = base or DetectorParams()
    val_start_day, test_start_day = val_start_s // SECONDS_PER_DAY, test_start_s // SECONDS_PER_DAY
    seasons = fit_seasons(table, before_day=val_start_day, options=options)
    with_seasons = base.model_copy(update={"seasons": seasons,
                                           "horizon_days": options.horizon_days})
    states = product_states(table, scores)
    span_key = table.product_id if options.observation_end == "product" else table.source
    last_by_key: dict[str, int] = {}
    for key, day in zip(span_key, _day(table.ts_s).tolist(), strict=True):
        last_by_key[str(key)] = max(day, last_by_key.get(str(key), day))
    span_end = {str(p): last_by_key[str(k)] for p, k in zip(table.product_id, span_key,
                                                            strict=True)}
    samples = build_samples(states, span_end, with_seasons, val_start_day=val_start_day,
                            test_start_day=test_start_day, options=options)
    n_fit, n_val = int(samples.is_fit.sum()), int(samples.is_validation.sum())
    log.info("detector samples fit=%d validation=%d", n_fit, n_val)
    if n_fit < 2 * len(CANDIDATES["all"]) or n_val < options.min_validation_samples:
        msg = (f"too few product-days to fit the detector (fit {n_fit}, validation {n_val}; "
               f"need >= {2 * len(CANDIDATES['all'])} and >= {options.min_validation_samples})")
        raise DataError(msg)
    counts = samples.n_window
    val = samples.is_validation
    y_val = samples.outcome[val]
    report: dict[str, Any] = {"version": VERSION, "fit_samples": n_fit,
                              "validation_samples": n_val, "candidates": {}}
    best: tuple[float, str, dict[str, float], float, float] | None = None
    for name, features in CANDIDATES.items():
        weights, intercept = fit_weights(samples, features, alpha=options.ridge_alpha)
        for shrink in options.shrink_grid:
            pred = predicted_index(samples, weights, intercept, shrink, counts)[val]
            mse = float(np.mean((pred - y_val) ** 2))
            report["candidates"][f"{name}/shrink={shrink:g}"] = {
                "validation_mse": round(mse, 5), "weights": weights, "intercept": intercept}
            if best is None or mse < best[0] - 1e-9:
                best = (mse, name, weights, intercept, shrink)
    assert best is not None
    mse, name, weights, intercept, shrink = best
    report["chosen"] = {"features": name, "shrink_reviews": shrink, "validation_mse": mse,
                        "validation_mse_no_change": round(float(np.mean(y_val ** 2)), 5)}
    ratio = np.exp(predicted_index(samples, weights, intercept, shrink, counts))[val]
    fell = samples.after[val] <= FALL_OUTCOME * samples.before[val]
    rose = samples.after[val] >= RISE_OUTCOME * samples.before[val]
    momentum = samples.momentum_ratio[val]
    mom_fall, mom_rise = momentum < 0.6, momentum > 1.6
    fall_enter, fall_info = choose_threshold(ratio, fell, int(mom_fall.sum()), below=True,
                                             candidates=np.geomspace(0.3, 0.97, 80))
    rise_enter, rise_info = choose_threshold(ratio, rose, int(mom_rise.sum()), below=False,
                                             candidates=np.geomspace(1.03, 3.0, 80))
    report["thresholds"] = {
        "falling": {**fall_info, "enter_ratio": round(fall_enter, 4),
                    "momentum_flagged": int(mom_fall.sum()),
                    "momentum_precision": _precision(mom_fall, fell),
                    "base_rate": round(float(fell.mean()), 4)},
        "rising": {**rise_info, "enter_ratio": round(rise_enter, 4),
                   "momentum_flagged": int(mom_rise.sum()),
                   "momentum_precision": _precision(mom_rise, rose),
                   "base_rate": round(float(rose.mean()), 4)}}
    sharp = _sharp_drop_level(1 - ratio, fell, ratio <= fall_enter, options, base)
    report["sharp_drop"] = sharp
    params = with_seasons.model_copy(update={
        "version": VERSION, "weights": weights, "intercept": intercept,
        "shrink_reviews": shrink, "fall_enter_ratio": round(fall_enter, 4),
        "fall_exit_ratio": round(math.sqrt(fall_enter), 4),
        "rise_enter_ratio": round(rise_enter, 4),
        "rise_exit_ratio": round(math.sqrt(rise_enter), 4),
        "sharp_drop_fall": sharp["sharp_drop_fall"]})
    return DetectorParams.model_validate(params.model_dump()), report


def _sharp_drop_level(fall: np.ndarray, fell: np.ndarray, flagged: np.ndarray,
                      options: FitOptions, base: DetectorParams) -> dict[str, Any]:
    levels = np.sort(np.unique(np.round(fall[flagged], 3)))
    for level in levels:
        hit = flagged & (fall >= level)
        if hit.sum() >= 3 and fell[hit].mean() >= options.sharp_drop_precision:
            return {"sharp_drop_fall": float(max(level, 0.05)),
                    "precision": float(fell[hit].mean()), "flagged": int(hit.sum())}
    return {"sharp_drop_fall": base.sharp_drop_fall, "precision": None, "flagged": 0,
            "note": f"no level reached precision {options.sharp_drop_precision} on validation; "
                    f"kept the default"}
