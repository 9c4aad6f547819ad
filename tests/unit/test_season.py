"""Seasonality: the profile arithmetic, the offline fit, and a December peak on a series."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pytest

from export.data import SECONDS_PER_DAY, ReviewTable
from export.detector_fit import FitOptions, choose_threshold, fit_seasons
from stream.season import FLAT, centred, expected_log_ratio, month_index, window_level
from stream.trends import DetectorParams, close_through
from stream.windows import ProductState

EPOCH = date(1970, 1, 1).toordinal()
START = date(2015, 1, 1).toordinal() - EPOCH


def _day(y: int, m: int, d: int) -> int:
    return date(y, m, d).toordinal() - EPOCH


def test_month_index_and_window_levels_by_hand() -> None:
    """January at 3x: all-January window ln 3, Dec 31 + Jan 1 ln 2, December alone 0."""
    assert (month_index(_day(2016, 1, 31)), month_index(_day(2016, 12, 1))) == (0, 11)
    jan3 = (math.log(3),) + (0.0,) * 11
    assert window_level(jan3, _day(2017, 1, 1), _day(2017, 1, 31)) == pytest.approx(math.log(3))
    assert window_level(jan3, _day(2016, 12, 31), _day(2017, 1, 1)) == pytest.approx(math.log(2))
    assert expected_log_ratio(jan3, (_day(2017, 1, 1), _day(2017, 1, 31)),
                              (_day(2016, 12, 1), _day(2016, 12, 31))) == pytest.approx(
                                  math.log(3))
    assert window_level(FLAT, 0, 400) == 0.0
    assert sum(centred([1.0] * 11 + [13.0])) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="12 monthly levels"):
        centred([0.0] * 11)


def _december_peak(category: str = "toys", years: int = 3) -> list[tuple[int, int]]:
    """(day, reviews that day): 2 per day, 6 per day in December."""
    days = range(START, START + 365 * years)
    return [(d, 6 if month_index(d) == 11 else 2) for d in days]


def _state(series: list[tuple[int, int]], category: str = "toys") -> ProductState:
    state = ProductState("p", 0, category=category)
    for day, n in series:
        for i in range(n):
            state.add((f"r{day}-{i}", "h", None, 4.0), day)
    return state


def test_december_peak_is_not_a_reversal_with_the_seasonal_profile() -> None:
    """Flat profile: rising every December, falling every January; with the season: neither."""
    end = START + 3 * 365 - 1
    plain = close_through(_state(_december_peak()), end, DetectorParams(), model_id="m",
                          evidence_k=1).changes
    assert [(c.new_state, c.window_end.date().isoformat()) for c in plain] == [
        ("rising", "2015-01-11"), ("stable", "2015-03-20"),  # the launch ramp
        ("rising", "2015-12-11"), ("stable", "2016-01-17"), ("falling", "2016-01-29"),
        ("stable", "2016-03-24"), ("rising", "2016-12-11"), ("stable", "2017-01-17"),
        ("falling", "2017-01-29"), ("stable", "2017-03-25"), ("rising", "2017-12-11")]
    december_3x = centred([0.0] * 11 + [math.log(3)])
    seasonal = DetectorParams(weights={"volume": 1.0, "season_recent": -1.0},
                              seasons={"toys": december_3x})
    calls = close_through(_state(_december_peak()), end, seasonal, model_id="m",
                          evidence_k=1).changes
    assert [(c.new_state, c.window_end.date().isoformat()) for c in calls] == [
        ("rising", "2015-01-11"), ("stable", "2015-03-28")]  # only the launch ramp
    other = close_through(_state(_december_peak(), category="garden"), end, seasonal,
                          model_id="m", evidence_k=1).changes
    assert len(other) == len(plain)  # a category without a profile falls back to flat


def _table(series_by_product: dict[tuple[str, str], list[tuple[int, int]]]) -> ReviewTable:
    rows = [(f"{pid}-{day}-{i}", pid, cat, day)
            for (pid, cat), series in series_by_product.items()
            for day, n in series for i in range(n)]
    rows.sort(key=lambda r: (r[3], r[0]))
    col = list(zip(*rows, strict=True))
    n = len(rows)
    return ReviewTable(review_id=np.array(col[0], dtype=object),
                       product_id=np.array(col[1], dtype=object),
                       source=np.array(["test"] * n, dtype=object),
                       ts_s=np.array(col[3], dtype=np.int64) * SECONDS_PER_DAY,
                       text=np.array(["ok"] * n, dtype=object),
                       rating=np.full(n, 4.0), category=np.array(col[2], dtype=object))


def test_fit_seasons_learns_a_december_peak_and_leaves_short_histories_flat() -> None:
    """Three years with a 3x December: December is the peak; one year: no profile (flat)."""
    table = _table({("a", "toys"): _december_peak(), ("b", "garden"): _december_peak(years=1)})
    seasons = fit_seasons(table, before_day=START + 3 * 365, options=FitOptions())
    assert set(seasons) == {"toys"}
    toys = seasons["toys"]
    assert max(range(12), key=lambda m: toys[m]) == 11
    assert toys[11] > 0.9 and all(abs(v) < 0.2 for v in toys[:11])


def test_choose_threshold_best_precision_with_at_least_the_reference_count() -> None:
    """Ratios 0.5..0.9, right at 0.5, 0.6, 0.8; >= 3 flagged: 0.75 -> 2/3, 0.85 -> 3/4 wins."""
    ratio = np.array([0.5, 0.6, 0.7, 0.8, 0.9])
    right = np.array([True, True, False, True, False])
    level, info = choose_threshold(ratio, right, 3, below=True,
                                   candidates=np.array([0.55, 0.65, 0.75, 0.85, 0.95]))
    assert (level, info["flagged"], info["precision"]) == (0.85, 4, 0.75)
    level, info = choose_threshold(ratio, right, 1, below=True,
                                   candidates=np.array([0.55, 0.65, 0.75]))
    assert (level, info["precision"]) == (0.55, 1.0)
