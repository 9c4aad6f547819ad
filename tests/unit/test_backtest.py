"""Backtest arithmetic on constructed series: outcomes, lead, recall, alerts, grid rules."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest

from stream import backtest as bt
from stream.events import ReviewScore
from stream.trends import DetectorParams

H = 90


def _volume(days: list[int], span_end: int, ratings: list[float] | None = None) -> bt.Volume:
    v = bt.Volume(days={"p": np.array(sorted(days), dtype=np.int64)}, span_end={"p": span_end})
    if ratings is not None:
        v.ratings = {"p": (np.array(sorted(days), dtype=np.int64), np.array(ratings))}
    return v


def _every_third() -> bt.Volume:
    """30 events on days 0, 3, ..., 87, then none; observed through day 400."""
    return _volume(list(range(0, 90, 3)), span_end=400)


def test_outcome_fall_rise_and_unscored() -> None:
    """10 before, 8 after: a 20 % fall; 13 after: a rise; a horizon past the span: unscored."""
    before = list(range(0, 90, 9))  # 10 events on days 0..81
    fall = bt.outcome(_volume(before + list(range(90, 170, 10)), 400), "p", 89, H)
    assert (fall.before, fall.after, fall.is_fall, fall.is_rise) == (10, 8, True, False)
    flat = bt.outcome(_volume(before + list(range(90, 179, 10)), 400), "p", 89, H)
    assert (flat.after, flat.is_fall, flat.is_rise) == (9, False, False)
    rise = bt.outcome(_volume(before + list(range(90, 179, 7)), 400), "p", 89, H)
    assert (rise.after, rise.is_rise) == (13, True)
    unscored = bt.outcome(_volume(before, 178), "p", 89, H)
    assert not unscored.is_scored and not unscored.is_right("falling")


def test_lead_days_until_the_trailing_rate_crosses() -> None:
    """One event a day until day 89: a falling call at 89 is followed by the crossing at 95."""
    v = _volume(list(range(90)), span_end=400)
    assert bt.lead_days(v, bt.Call("m", "p", 89, "falling"), H) == 6
    assert bt.lead_days(v, bt.Call("m", "p", 89, "stable"), H) is None
    assert bt.lead_days(v, bt.Call("m", "p", 89, "rising"), H) is None


def test_direction_card_precision_recall_and_lead() -> None:
    """Hand-counted: 9 eligible grid days, all falls; a falling call at 80 covers 3 of them."""
    v = _every_third()
    eligible = bt.eligible_days(v, horizon_days=H, min_reviews=20)
    assert [d for _, d, _ in eligible] == [63, 70, 77, 84, 91, 98, 105, 112, 119]
    assert all(o.is_fall for _, _, o in eligible)
    calls = [bt.Call("m", "p", 80, "falling"), bt.Call("m", "p", 100, "rising")]
    falling = bt.direction_card(calls, "falling", v, eligible, horizon_days=H)
    assert falling == {"calls": 1, "scored": 1, "right": 1, "precision": 1.0,
                       "precision_ci90": [0.2699, 1.0], "recall": 0.3333, "recall_events": 9,
                       "base_rate": 1.0,
                       "median_lead_days": 16}
    rising = bt.direction_card(calls, "rising", v, eligible, horizon_days=H)
    assert (rising["precision"], rising["recall"], rising["base_rate"]) == (0.0, None, 0.0)


def test_wilson_interval_by_hand() -> None:
    """8 of 10: centre (8 + z^2/2) / (10 + z^2), half z sqrt(1.6 + z^2/4) / (10 + z^2)."""
    assert bt.wilson_90(8, 10) == [0.5408, 0.9314]
    assert bt.wilson_90(0, 0) is None


def test_alert_card_counts_false_alerts_per_product_year() -> None:
    """An alert before a rise is false: 1 false alert over 401 observed days."""
    card = bt.alert_card([bt.Alert("m", "p", 0), bt.Alert("m", "p", 80)], _every_third(),
                         horizon_days=H)
    assert card == {"alerts": 2, "scored": 2, "false": 1, "precision": 0.5,
                    "product_years": 1.1, "false_per_product_year": pytest.approx(0.9108, abs=1e-4)}


def _launch_then_stop() -> bt.Volume:
    """1 event a day on days 0-179, 3 a day on days 180-269, then silence."""
    days = list(range(180)) + [d for d in range(180, 270) for _ in range(3)]
    return _volume(days, span_end=400)


def test_momentum_grid_calls_exact_days() -> None:
    """Hand-computed momentum calls: rising 21, stable 70, rising 189, stable 238, falling 287."""
    calls, alerts = bt.grid_calls(_launch_then_stop(), bt.momentum_state, method="momentum",
                                  last_day=400, options=bt.RuleOptions())
    assert [(c.day, c.state, c.is_sharp_drop) for c in calls] == [
        (21, "rising", False), (70, "stable", False), (189, "rising", False),
        (238, "stable", False), (287, "falling", True)]
    assert [a.day for a in alerts] == [287]
    card = bt.scorecard(calls, alerts, _launch_then_stop(), horizon_days=H, min_reviews=20)
    assert (card["rising"]["scored"], card["rising"]["right"]) == (2, 2)
    assert (card["falling"]["precision"], card["sharp_drop"]["false"]) == (1.0, 0)
    late = bt.scorecard(calls, alerts, _launch_then_stop(), horizon_days=H, min_reviews=20,
                        from_day=100)  # the rising call of day 21 is replayed, not scored
    assert (late["rising"]["calls"], late["rising"]["right"]) == (1, 1)
    assert late["sharp_drop"]["product_years"] == 0.82  # days 100..400


def test_rating_rule_needs_a_shift_and_enough_ratings() -> None:
    """Stars drop from 5 to 3 at day 60: the rating rule calls falling on grid day 70."""
    days = list(range(120))
    ratings = [5.0 if d < 60 else 3.0 for d in days]
    calls, _ = bt.grid_calls(_volume(days, 400, ratings), bt.rating_state, method="rating",
                             last_day=119, options=bt.RuleOptions())
    # day 63: recent 34..63 -> 26 x 5 + 4 x 3 = 4.73, baseline 0..33 -> 5.0: shift -0.27
    # day 70: recent 41..70 -> 19 x 5 + 11 x 3 = 4.27: shift -0.73 -> falling
    assert [(c.day, c.state) for c in calls] == [(70, "falling")]


def test_trendstream_calls_are_the_aggregators_changes() -> None:
    """test_aggregation's golden series: A rises, settles, then falls as B's events close days."""
    start = datetime(2017, 1, 1, tzinfo=UTC)

    def score(pid: str, day: int, i: int) -> ReviewScore:
        return ReviewScore(review_id=f"{pid}-{day}-{i}", product_id=pid,
                           ts=start + timedelta(days=day, hours=12), score=0.5,
                           is_text_used=True, unk_ratio=0.0, n_tokens=10, is_truncated=False,
                           rating=4.0, content_sha256="h", model_id="m", source_partition=0,
                           source_offset=0)
    scores = [score(p, d, i) for d in range(400) for p, n in (("A", 2 if d < 180 else 0),
                                                              ("B", 1)) for i in range(n)]
    calls, alerts = bt.trendstream_calls(scores, DetectorParams(), model_id="m",
                                         partition_of=lambda _p: 0, allowed_lateness_ms=0)
    a = [(c.state, bt.day_end(c.day).date()) for c in calls if c.product_id == "A"]
    assert a == [("rising", date(2017, 1, 11)), ("stable", date(2017, 3, 20)),
                 ("falling", date(2017, 7, 13))]
    assert all(c.event_id for c in calls)
    assert [(al.product_id, bt.day_end(al.day).date()) for al in alerts] == \
        [("A", date(2017, 7, 19))]
