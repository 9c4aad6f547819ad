"""The chaos suite's verdict, computed from what the topics hold. Pure.

A run's :class:`Outcome` is read from its output topics (read_committed) and its
product-windows changelog (what a restarted worker restores), never from the worker's
own counters. :func:`compare` sets it against the undisturbed reference run of the same
input:

* ``reviews_lost``: input reviews with no score on review-scores, plus reviews the
  reference's restored state holds and the run's does not, plus reviews the run
  dead-lettered and the reference did not, plus reviews that first reached the
  aggregator after a later offset of their input partition (days may have closed
  without them: the calls made then are not the reference's);
* ``reviews_double_counted``: reviews a restored state holds twice, plus reviews the
  run's state holds and the reference's does not;
* ``trend_events_missing`` / ``trend_events_unexpected``: reference event_ids the run
  lacks / run event_ids the reference lacks; ``trend_events_duplicated``: records past
  the first of an event_id (at-least-once allows them only as exact byte copies:
  ``duplicates_identical``). The same for sharp-drop alerts;
* ``states_differing``: products whose restored state (reviews, trend, alert flag, last
  review day) is not the reference's. Evaluation progress (``evaluated_through_day``)
  is left out: it is written only with a change of state, so where a run's batches
  ended moves it, and re-evaluating those days gives the same calls (which the trend
  events check); ``detail.evaluation_progress_differing`` still counts it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stream.windows import ProductState

Record = tuple[bytes | None, bytes | None]  # (key, value) as stored


@dataclass(slots=True)
class Outcome:
    """What one run left on the broker."""

    scored: Counter[str] = field(default_factory=Counter)  # review_id -> records
    dead: Counter[str] = field(default_factory=Counter)  # review_id (or raw sha256) -> records
    dead_reasons: Counter[str] = field(default_factory=Counter)
    trends: dict[str, list[bytes]] = field(default_factory=dict)  # event_id -> records
    alerts: dict[str, list[bytes]] = field(default_factory=dict)  # alert_id -> records
    states: dict[str, ProductState] = field(default_factory=dict)
    dead_raw_longest: int = 0  # characters of the longest raw_value kept in a dead letter
    truncated_ids: set[str] = field(default_factory=set)  # scored with is_truncated
    out_of_order: int = 0  # reviews the aggregator first got after a later input offset

    @classmethod
    def read(cls, *, scores: Iterable[Record], dead: Iterable[Record], trends: Iterable[Record],
             alerts: Iterable[Record], changelog: Iterable[Record],
             batches: Iterable[tuple[int, bytes | None, bytes | None]] = ()) -> Outcome:
        """``batches``: (partition, key, value) of review-score-batches in offset order."""
        out = cls()
        highest: dict[int, int] = {}
        seen: set[tuple[int, int]] = set()
        for partition, key, value in batches:
            if key == b"__tick__":
                continue
            for item in json.loads(value or b"[]"):
                offset = int(item["source_offset"])
                if (partition, offset) in seen:
                    continue
                seen.add((partition, offset))
                if offset < highest.get(partition, -1):
                    out.out_of_order += 1
                highest[partition] = max(offset, highest.get(partition, -1))
        for _, value in scores:
            score = json.loads(value or b"{}")
            out.scored[score["review_id"]] += 1
            if score.get("is_truncated"):
                out.truncated_ids.add(score["review_id"])
        for _, value in dead:
            letter = json.loads(value or b"{}")
            out.dead[letter.get("review_id") or letter.get("raw_sha256") or ""] += 1
            out.dead_reasons[letter.get("reason", "")] += 1
            out.dead_raw_longest = max(out.dead_raw_longest, len(letter.get("raw_value") or ""))
        for _, value in trends:
            out.trends.setdefault(json.loads(value or b"{}")["event_id"], []).append(value or b"")
        for _, value in alerts:
            out.alerts.setdefault(json.loads(value or b"{}")["alert_id"], []).append(value or b"")
        latest: dict[str, bytes | None] = {}
        for key, value in changelog:  # compaction's view: the last value of each key wins
            latest[json.loads(key or b'""')] = value
        out.states = {k: ProductState.from_bytes(v) for k, v in latest.items() if v is not None}
        return out

    def state_ids(self) -> dict[str, Counter[str]]:
        """review_id counts held by each product's restored state."""
        return {pid: Counter(r[0] for bucket in s.buckets.values() for r in bucket)
                for pid, s in self.states.items()}


def _brief(raw: bytes) -> str:
    event = json.loads(raw)
    return (f"{event.get('product_id')} {event.get('previous_state')}->"
            f"{event.get('new_state')} {event.get('window_end')}")


def _events(ref: dict[str, list[bytes]], run: dict[str, list[bytes]]) -> dict[str, Any]:
    return {"missing": len(ref.keys() - run.keys()), "unexpected": len(run.keys() - ref.keys()),
            "examples": {"missing": sorted(_brief(ref[k][0]) for k in ref.keys() - run.keys())[:6],
                         "unexpected": sorted(_brief(run[k][0])
                                              for k in run.keys() - ref.keys())[:6]},
            "duplicated": sum(len(v) - 1 for v in run.values()),
            "identical": all(len(set(v)) == 1 for v in run.values()),
            "total": sum(len(v) for v in run.values())}


_SIGNATURE = ("trend", "is_alerted", "last_review_day", "reviews")


def _signature(state: ProductState) -> tuple[Any, ...]:
    buckets = tuple(sorted((d, tuple(sorted(b))) for d, b in state.buckets.items()))
    return state.trend, state.is_alerted, state.last_review_day, buckets


def compare(reference: Outcome, run: Outcome, *, input_ids: set[str],
            expected_dead: Counter[str] | None = None) -> dict[str, Any]:
    """The chaos verdict of one run against the reference (see the module docstring).

    ``expected_dead``: dead letters the run must have on top of the reference's (hostile
    input), counted as :class:`Outcome` counts them.
    """
    ref_ids, run_ids = reference.state_ids(), run.state_ids()
    lost_state = extra_state = held_twice = 0
    for pid in ref_ids.keys() | run_ids.keys():
        ref, got = ref_ids.get(pid, Counter()), run_ids.get(pid, Counter())
        lost_state += len(ref.keys() - got.keys())
        extra_state += len(got.keys() - ref.keys())
        held_twice += sum(n - 1 for n in got.values())
    unscored = len(input_ids - run.scored.keys())
    beyond = run.dead - reference.dead  # dead letters the reference does not have
    wanted = expected_dead or Counter()
    dead_extra = sum((beyond - wanted).values())
    dead_missing = sum((wanted - beyond).values())
    trends, alerts = _events(reference.trends, run.trends), _events(reference.alerts, run.alerts)
    fields: Counter[str] = Counter()
    for pid in reference.states.keys() | run.states.keys():
        if pid not in reference.states or pid not in run.states:
            fields["presence"] += 1
            continue
        ref_sig, run_sig = _signature(reference.states[pid]), _signature(run.states[pid])
        fields.update(name for name, a, b in zip(_SIGNATURE, ref_sig, run_sig, strict=True)
                      if a != b)
        if reference.states[pid].evaluated_through_day != \
                run.states[pid].evaluated_through_day:
            fields["evaluation_progress"] += 1
    differing = sum(1 for pid in reference.states.keys() & run.states.keys()
                    if _signature(reference.states[pid]) != _signature(run.states[pid]))
    differing += fields["presence"]
    return {
        "reviews_lost": unscored + lost_state + dead_extra + run.out_of_order,
        "reviews_double_counted": held_twice + extra_state,
        "trend_events_missing": trends["missing"],
        "trend_events_duplicated": trends["duplicated"],
        "trend_events_unexpected": trends["unexpected"],
        "duplicates_identical": trends["identical"] and alerts["identical"],
        "trend_events": trends["total"],
        "alerts_missing": alerts["missing"],
        "alerts_duplicated": alerts["duplicated"],
        "alerts_unexpected": alerts["unexpected"],
        "states_differing": differing,
        "scores_redelivered": sum(n - 1 for n in run.scored.values()),
        "dead_letters_missing": dead_missing,
        "detail": {"unscored": unscored, "lost_from_state": lost_state,
                   "dead_lettered_not_in_reference": dead_extra,
                   "reached_aggregator_out_of_order": run.out_of_order,
                   "held_twice": held_twice, "extra_in_state": extra_state,
                   "state_fields_differing": {k: v for k, v in fields.items()
                                              if k != "evaluation_progress"},
                   "evaluation_progress_differing": fields["evaluation_progress"],
                   "dead_letter_reasons": dict(run.dead_reasons),
                   "trend_event_examples": trends["examples"]},
    }


def passed(verdict: dict[str, Any], *, exactly_once: bool) -> bool:
    """Nothing lost, nothing counted twice, every event there, repeats only as exact copies
    (and none at all under exactly-once)."""
    ok = (verdict["reviews_lost"] == 0 and verdict["dead_letters_missing"] == 0
          and verdict["reviews_double_counted"] == 0
          and verdict["trend_events_missing"] == 0 and verdict["trend_events_unexpected"] == 0
          and verdict["alerts_missing"] == 0 and verdict["alerts_unexpected"] == 0
          and verdict["states_differing"] == 0 and verdict["duplicates_identical"])
    if exactly_once:
        ok = ok and verdict["trend_events_duplicated"] == 0 and \
            verdict["alerts_duplicated"] == 0 and verdict["scores_redelivered"] == 0
    return ok
