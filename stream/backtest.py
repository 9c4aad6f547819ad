"""Product-level backtest: trend calls replayed in event time, scored against what followed.

Pure: no Kafka, no model, no files (``stream.backtestio`` feeds it, ``stream.backtestplot``
draws it). Definitions (README, "Backtest"):

* a **call** is a state entry (``rising``, ``stable`` or ``falling``) made at the close
  of UTC day ``D``; its time ``t`` is the end of ``D``;
* **outcome** of a call: the product's volume (reviews, or units sold) in ``(t, t+H]``
  against ``(t-H, t]``. A falling call is right if volume fell by >= 20 % (after <=
  0.8 x before), a rising call if it rose by >= 25 % (after >= 1.25 x before, and > 0).
  Calls whose ``t+H`` passes the end of the product's observed span are not scored;
* **lead time** of a right call: days from the call to the first day whose trailing
  30-day rate crosses the same threshold against the rate of ``(t-H, t]`` (0 when it has
  already crossed; none when it never does within ``H``);
* **recall**: the *eligible* product-days are those on the weekly grid (every 7th UTC day
  since the epoch) whose outcome is scored and whose detector window (the 90 days up to
  ``D``) holds at least ``min_reviews`` reviews; recall of falling = share of the
  eligible product-days with a >= 20 % fall on which the method's state was falling
  (rising likewise); the **base rate** is the share of eligible product-days that fall
  (rise);
* a **sharp-drop alert** is false when its outcome is scored and not a >= 20 % fall;
  false alerts are counted per product-year of observed span.

Precisions carry a 90 % Wilson interval.

Methods: ``trendstream`` (exactly the calls and alerts the worker emits: the worker's
aggregation step, partitioned like Kafka's default partitioner, fed in the replay's
order), ``momentum`` (recent 30-day rate against the 60 days before, falling below
0.6 x, rising above 1.6 x, checked on the weekly grid) and ``rating`` (recent 30-day
mean stars against the 60 days before, falling at <= -0.3, rising at >= +0.3, at least
5 rated reviews in each window). Both baselines need ``min_reviews`` in their 90 days,
like the detector, and count state entries as calls.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from statistics import median
from typing import Any, Final

import numpy as np

from stream.aggregation import Aggregator, DictStore
from stream.events import ReviewScore, day_of
from stream.trends import DetectorParams

FALL_RATIO: Final = 0.8  # a call "falling" is right after a >= 20 % fall
RISE_RATIO: Final = 1.25  # a call "rising" is right after a >= 25 % rise
GRID_DAYS: Final = 7
LEAD_WINDOW_DAYS: Final = 30
METHODS: Final = ("trendstream", "momentum", "rating")
FLUSH_EVERY: Final = 256  # records per simulated micro-batch
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def day_end(day: int) -> datetime:
    """The moment a call at the close of ``day`` is made (00:00 UTC of the next day)."""
    return _EPOCH + timedelta(days=day + 1)


@dataclass(frozen=True, slots=True)
class Call:
    """One state entry of one method."""

    method: str
    product_id: str
    day: int  # made at the close of this UTC day
    state: str
    event_id: str | None = None
    is_sharp_drop: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"product_id": self.product_id,
                               "ts": day_end(self.day).strftime("%Y-%m-%dT%H:%M:%SZ"),
                               "state": self.state, "method": self.method}
        if self.event_id is not None:
            out["event_id"] = self.event_id
        if self.is_sharp_drop:
            out["is_sharp_drop"] = True
        return out


@dataclass(frozen=True, slots=True)
class Alert:
    """A sharp-drop alert of one method, at the close of ``day``."""

    method: str
    product_id: str
    day: int


@dataclass(slots=True)
class Volume:
    """Every product's events (reviews or units) as sorted day indices, and its span."""

    days: dict[str, np.ndarray]
    span_end: dict[str, int]  # last day whose volume is observed
    ratings: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def from_events(cls, events: Iterable[tuple[str, int, float | None, str]], *,
                    observation_end: str = "product", span_end_day: int | None = None) -> Volume:
        """Events as (product_id, day, rating or None, source); see ``span_end_of``."""
        by_product: dict[str, list[int]] = defaultdict(list)
        rated: dict[str, list[tuple[int, float]]] = defaultdict(list)
        source_of: dict[str, str] = {}
        source_end: dict[str, int] = {}
        for pid, day, rating, source in events:
            by_product[pid].append(day)
            if rating is not None:
                rated[pid].append((day, rating))
            source_of.setdefault(pid, source)
            source_end[source] = max(day, source_end.get(source, day))
        days = {p: np.sort(np.asarray(d, dtype=np.int64)) for p, d in by_product.items()}
        ends = {p: int(d[-1]) if observation_end == "product" else source_end[source_of[p]]
                for p, d in days.items()}
        if span_end_day is not None:
            ends = {p: min(e, span_end_day) for p, e in ends.items()}
        ratings = {p: (np.array([d for d, _ in sorted(r)], dtype=np.int64),
                       np.array([v for _, v in sorted(r)], dtype=np.float64))
                   for p, r in rated.items()}
        return cls(days=days, span_end=ends, ratings=ratings)

    def count(self, product_id: str, first_day: int, last_day: int) -> int:
        """Events of days first_day..last_day (inclusive)."""
        d = self.days[product_id]
        return int(np.searchsorted(d, last_day, "right") - np.searchsorted(d, first_day, "left"))

    def mean_rating(self, product_id: str, first_day: int,
                    last_day: int) -> tuple[float | None, int]:
        """Mean stars and number of rated reviews in days first_day..last_day."""
        found = self.ratings.get(product_id)
        if found is None:
            return None, 0
        d, v = found
        lo, hi = np.searchsorted(d, first_day, "left"), np.searchsorted(d, last_day, "right")
        return (float(v[lo:hi].mean()), int(hi - lo)) if hi > lo else (None, 0)

    def first_day(self, product_id: str) -> int:
        return int(self.days[product_id][0])

    def product_years(self, from_day: int | None = None) -> float:
        """Observed span summed over products (from ``from_day`` on), in years."""
        lo = -(1 << 62) if from_day is None else from_day
        return sum(max(0, self.span_end[p] - max(lo, self.first_day(p)) + 1)
                   for p in self.days) / 365.25


@dataclass(frozen=True, slots=True)
class Outcome:
    """What followed a call at the close of ``day``."""

    before: int
    after: int
    is_scored: bool

    @property
    def is_fall(self) -> bool:
        return self.is_scored and self.before > 0 and self.after <= FALL_RATIO * self.before

    @property
    def is_rise(self) -> bool:
        return self.is_scored and self.after > 0 and self.after >= RISE_RATIO * self.before

    def is_right(self, state: str) -> bool:
        return {"falling": self.is_fall, "rising": self.is_rise}.get(state, False)


def outcome(volume: Volume, product_id: str, day: int, horizon_days: int) -> Outcome:
    """Volume in (t-H, t] and (t, t+H] for t = end of ``day``; scored if t+H is observed."""
    h = horizon_days
    return Outcome(before=volume.count(product_id, day - h + 1, day),
                   after=volume.count(product_id, day + 1, day + h),
                   is_scored=day + h <= volume.span_end[product_id])


def lead_days(volume: Volume, call: Call, horizon_days: int) -> int | None:
    """Days until the trailing 30-day rate crosses the outcome threshold (None: never)."""
    if call.state not in ("falling", "rising"):
        return None
    h, w = horizon_days, LEAD_WINDOW_DAYS
    reference = volume.count(call.product_id, call.day - h + 1, call.day) / h
    for d in range(call.day, call.day + h + 1):
        rate = volume.count(call.product_id, d - w + 1, d) / w
        if (rate <= FALL_RATIO * reference) if call.state == "falling" else \
                (rate >= RISE_RATIO * reference and rate > 0):
            return d - call.day
    return None


# --- methods ---------------------------------------------------------------------------

PartitionOf = Callable[[str], int]


def trendstream_calls(scores: Iterable[ReviewScore], params: DetectorParams, *, model_id: str,
                      partition_of: PartitionOf, allowed_lateness_ms: int,
                      evidence_k: int = 5) -> tuple[list[Call], list[Alert]]:
    """The worker's own aggregation step over scored reviews in replay order (dict tables).

    Each partition sees its records in the order given, as a Kafka partition would; the
    interleaving across partitions does not matter (their states are independent).
    """
    aggregator = Aggregator(params=params, model_id=model_id,
                            allowed_lateness_ms=allowed_lateness_ms, evidence_k=evidence_k,
                            windows=DictStore(), clocks=DictStore())
    calls: list[Call] = []
    alerts: list[Alert] = []
    for i, score in enumerate(scores):
        if i % FLUSH_EVERY == 0:
            aggregator.flush()  # as the worker does after each micro-batch
        result = aggregator.on_score(partition_of(score.product_id), score)
        calls += [Call("trendstream", c.product_id, day_of(int(c.window_end.timestamp() * 1000))
                       - 1, c.new_state, c.event_id, c.is_sharp_drop) for c in result.changes]
        alerts += [Alert("trendstream", a.product_id,
                         day_of(int(a.window_end.timestamp() * 1000)) - 1)
                   for a in result.alerts]
    return calls, alerts


def grid(first_day: int, last_day: int) -> range:
    """Days of the weekly grid (every GRID_DAYS-th day since the epoch) in the range."""
    start = first_day + (-first_day) % GRID_DAYS
    return range(start, last_day + 1, GRID_DAYS)


@dataclass(frozen=True, slots=True)
class RuleOptions:
    """The grid baselines' thresholds (module docstring)."""

    recent_days: int = 30
    baseline_days: int = 60
    min_reviews: int = 20
    fall_below: float = 0.6  # momentum ratio
    rise_above: float = 1.6
    sharp_below: float = 0.4  # momentum ratio of a sharp drop (a >= 60 % fall)
    sharp_min_reviews: int = 30
    rating_shift: float = 0.3  # stars
    min_rated: int = 5


def _windows(day: int, o: RuleOptions) -> tuple[tuple[int, int], tuple[int, int]]:
    recent = (day - o.recent_days + 1, day)
    return recent, (day - o.recent_days - o.baseline_days + 1, day - o.recent_days)


def momentum_state(volume: Volume, pid: str, day: int, o: RuleOptions) -> tuple[str | None, bool]:
    """The momentum rule's state on ``day`` (None: too few reviews), and is it a sharp drop."""
    recent_w, base_w = _windows(day, o)
    recent, base = volume.count(pid, *recent_w), volume.count(pid, *base_w)
    if recent + base < o.min_reviews:
        return None, False
    ratio = math.inf if base == 0 else (recent / o.recent_days) / (base / o.baseline_days)
    if ratio < o.fall_below:
        return "falling", ratio <= o.sharp_below and recent + base >= o.sharp_min_reviews
    return ("rising" if ratio > o.rise_above else "stable"), False


def rating_state(volume: Volume, pid: str, day: int, o: RuleOptions) -> tuple[str | None, bool]:
    """The rating-only rule's state on ``day`` (None: too few (rated) reviews)."""
    recent_w, base_w = _windows(day, o)
    if volume.count(pid, recent_w[0] - o.baseline_days, day) < o.min_reviews:
        return None, False
    recent, n_recent = volume.mean_rating(pid, *recent_w)
    base, n_base = volume.mean_rating(pid, *base_w)
    if recent is None or base is None or min(n_recent, n_base) < o.min_rated:
        return None, False
    shift = recent - base
    if shift <= -o.rating_shift:
        return "falling", False
    return ("rising" if shift >= o.rating_shift else "stable"), False


StateRule = Callable[[Volume, str, int, RuleOptions], tuple[str | None, bool]]


def grid_calls(volume: Volume, rule: StateRule, *, method: str, last_day: int,
               options: RuleOptions) -> tuple[list[Call], list[Alert]]:
    """A rule checked on the weekly grid; a change of state is a call."""
    calls: list[Call] = []
    alerts: list[Alert] = []
    for pid in sorted(volume.days):
        current, alerted = "stable", False
        for day in grid(volume.first_day(pid), last_day):
            new, is_sharp = rule(volume, pid, day, options)
            if new is not None and new != current:
                current, alerted = new, False
                calls.append(Call(method, pid, day, new, is_sharp_drop=is_sharp))
            if current == "falling" and is_sharp and not alerted:
                alerted = True
                alerts.append(Alert(method, pid, day))
    return calls, alerts


# --- scoring ---------------------------------------------------------------------------

def state_at(calls: Sequence[Call], product_id: str, day: int) -> str:
    """A method's state on ``day`` (after that day's close) from its calls."""
    found = [c for c in calls if c.product_id == product_id and c.day <= day]
    return max(found, key=lambda c: c.day).state if found else "stable"


def eligible_days(volume: Volume, *, horizon_days: int, min_reviews: int, window_days: int = 90,
                  from_day: int | None = None) -> list[tuple[str, int, Outcome]]:
    """Scored weekly-grid product-days with >= min_reviews in the detector's window."""
    out = []
    for pid in sorted(volume.days):
        first = volume.first_day(pid) if from_day is None else max(from_day,
                                                                   volume.first_day(pid))
        for day in grid(first, volume.span_end[pid] - horizon_days):
            if volume.count(pid, day - window_days + 1, day) >= min_reviews:
                out.append((pid, day, outcome(volume, pid, day, horizon_days)))
    return out


def _precision(right: int, scored: int) -> float | None:
    return None if scored == 0 else round(right / scored, 4)


def wilson_90(right: int, scored: int) -> list[float] | None:
    """90 % Wilson score interval of a precision (few calls: the interval says how few)."""
    if scored == 0:
        return None
    z2 = 1.6448536 ** 2
    centre = (right + z2 / 2) / (scored + z2)
    half = math.sqrt(z2) * math.sqrt(right * (scored - right) / scored + z2 / 4) / (scored + z2)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def _entries(calls: Sequence[Call], state: str, volume: Volume, horizon_days: int,
             from_day: int | None) -> tuple[list[Call], list[tuple[Call, Outcome]]]:
    """One direction's calls from ``from_day`` on, and those of them whose outcome is scored."""
    lo = -(1 << 62) if from_day is None else from_day
    mine = [c for c in calls if c.state == state and c.day >= lo]
    outcomes = [(c, outcome(volume, c.product_id, c.day, horizon_days)) for c in mine]
    return mine, [(c, o) for c, o in outcomes if o.is_scored]


def direction_card(calls: Sequence[Call], state: str, volume: Volume,
                   eligible: Sequence[tuple[str, int, Outcome]], *,
                   horizon_days: int, from_day: int | None = None) -> dict[str, Any]:
    """Precision, recall, number of calls and median lead of one direction.

    Precision counts the calls from ``from_day`` on; recall reads the state on each
    eligible day, which earlier calls set too.
    """
    mine, scored = _entries(calls, state, volume, horizon_days, from_day)
    right = [c for c, o in scored if o.is_right(state)]
    leads = [d for c in right if (d := lead_days(volume, c, horizon_days)) is not None]
    events = [(p, d) for p, d, o in eligible if o.is_right(state)]
    by_product: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        by_product[c.product_id].append(c)
    hit = sum(state_at(by_product[p], p, d) == state for p, d in events)
    return {"calls": len(mine), "scored": len(scored), "right": len(right),
            "precision": _precision(len(right), len(scored)),
            "precision_ci90": wilson_90(len(right), len(scored)),
            "recall": _precision(hit, len(events)), "recall_events": len(events),
            "base_rate": _precision(len(events), len(eligible)),
            "median_lead_days": float(median(leads)) if leads else None}


def alert_card(alerts: Sequence[Alert], volume: Volume, *, horizon_days: int,
               from_day: int | None = None) -> dict[str, Any]:
    """Sharp-drop alerts: how many, how many scored, how many false, per product-year."""
    outcomes = [outcome(volume, a.product_id, a.day, horizon_days) for a in alerts]
    scored = [o for o in outcomes if o.is_scored]
    false = sum(not o.is_fall for o in scored)
    years = volume.product_years(from_day)
    return {"alerts": len(alerts), "scored": len(scored), "false": false,
            "precision": _precision(len(scored) - false, len(scored)),
            "product_years": round(years, 2),
            "false_per_product_year": None if years == 0 else round(false / years, 4)}


def scorecard(calls: Sequence[Call], alerts: Sequence[Alert], volume: Volume, *,
              horizon_days: int, min_reviews: int, from_day: int | None = None) -> dict[str, Any]:
    """One method's scorecard (both directions and its sharp-drop alerts).

    With ``from_day``, only calls, alerts and eligible days from that day on are scored
    (the replay itself starts at the beginning: the state before it is real).
    """
    eligible = eligible_days(volume, horizon_days=horizon_days, min_reviews=min_reviews,
                             from_day=from_day)
    if from_day is not None:
        alerts = [a for a in alerts if a.day >= from_day]
    cards = {state: direction_card(calls, state, volume, eligible, horizon_days=horizon_days,
                                   from_day=from_day)
             for state in ("falling", "rising")}
    return {**cards, "sharp_drop": alert_card(alerts, volume, horizon_days=horizon_days,
                                              from_day=from_day),
            "eligible_product_days": len(eligible)}


def sweep_point(calls: Sequence[Call], volume: Volume, *, horizon_days: int,
                threshold: dict[str, float], from_day: int | None = None) -> dict[str, Any]:
    """Calls and precision of both directions at one threshold setting."""
    point: dict[str, Any] = {"threshold": threshold}
    for state in ("falling", "rising"):
        mine, scored = _entries(calls, state, volume, horizon_days, from_day)
        right = sum(o.is_right(state) for _, o in scored)
        point[state] = {"calls": len(mine), "scored": len(scored),
                        "precision": _precision(right, len(scored))}
    return point
