"""Seasonal expectation of review volume, from a 12-month profile. Pure.

A profile is twelve natural-log levels, one per calendar month (January first), centred
on 0: ``exp(profile[m])`` is month ``m``'s review rate relative to the product's average.
The *expected log ratio* of two windows is what the season alone predicts for
``ln(rate in window A / rate in window B)``: a December peak followed by a January fall
shows up here, so the detector can tell it from a change in the product's own trend.

Profiles are fitted offline per category (``export/detector_fit.py``) and stored in the
manifest. A category without one uses the manifest's default profile, and a manifest
without a default uses the flat profile (all zeros: no seasonality), which is what a
category with too little history to learn its season gets (README, "Trend rule").
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from functools import lru_cache
from typing import Final

MONTHS: Final = 12
FLAT: Final = (0.0,) * MONTHS
_EPOCH: Final = date(1970, 1, 1)

Profile = tuple[float, ...]


def month_index(day: int) -> int:
    """Calendar month (0 = January) of a UTC day index (days since 1970-01-01)."""
    return (_EPOCH + timedelta(days=day)).month - 1


@lru_cache(maxsize=65_536)
def window_level(profile: Profile, first_day: int, last_day: int) -> float:
    """ln of the mean seasonal rate over days first_day..last_day (inclusive)."""
    if profile == FLAT or last_day < first_day:
        return 0.0
    total = sum(math.exp(profile[month_index(d)]) for d in range(first_day, last_day + 1))
    return math.log(total / (last_day - first_day + 1))


def expected_log_ratio(profile: Profile, window_a: tuple[int, int],
                       window_b: tuple[int, int]) -> float:
    """What the season alone predicts for ln(rate in A / rate in B); windows are inclusive."""
    return window_level(profile, *window_a) - window_level(profile, *window_b)


def centred(levels: list[float]) -> Profile:
    """A profile from twelve log levels, shifted so that they average 0."""
    if len(levels) != MONTHS:
        msg = f"a seasonal profile has {MONTHS} monthly levels, got {len(levels)}"
        raise ValueError(msg)
    mean = sum(levels) / MONTHS
    return tuple(round(v - mean, 6) for v in levels)
