"""The chaos verdict (stream.chaoscheck) and the hostile generator (stream.hostile), pure."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import UTC, datetime

import pytest

from stream.chaoscheck import Outcome, compare, passed
from stream.errors import EventError
from stream.events import parse_review
from stream.hostile import hostile_plan
from stream.windows import ProductState


def _state(pid: str, ids: list[str], trend: str = "stable") -> tuple[bytes, bytes]:
    state = ProductState(pid, 0, trend=trend)
    for i, review_id in enumerate(ids):
        state.add((review_id, "ab" * 8, 0.5, 4.0), 17_000 + i)
    return json.dumps(pid).encode(), state.to_bytes()


def _score(review_id: str, offset: int) -> bytes:
    return json.dumps({"review_id": review_id, "source_offset": offset,
                       "is_truncated": False}).encode()


def _trend(event_id: str, extra: str = "") -> bytes:
    return json.dumps({"event_id": event_id, "x": extra}).encode()


def _outcome(*, ids: list[str], states: list[tuple[bytes, bytes]], trends: list[bytes],
             batches: list[list[int]] | None = None) -> Outcome:
    return Outcome.read(scores=[(None, _score(i, n)) for n, i in enumerate(ids)], dead=[],
                        trends=[(None, t) for t in trends], alerts=[], changelog=states,
                        batches=[(0, None, b"[" + b",".join(_score(f"r{o}", o) for o in b)
                                  + b"]") for b in batches or []])


def test_an_undisturbed_run_passes_against_itself() -> None:
    ref = _outcome(ids=["a", "b"], states=[_state("p", ["a", "b"])], trends=[_trend("e1")])
    verdict = compare(ref, ref, input_ids={"a", "b"})
    assert passed(verdict, exactly_once=True)
    assert verdict["trend_events"] == 1 and verdict["reviews_lost"] == 0


def test_lost_reviews_missing_and_unexpected_events_and_repeats_are_counted() -> None:
    ref = _outcome(ids=["a", "b", "c"], states=[_state("p", ["a", "b", "c"])],
                   trends=[_trend("e1"), _trend("e2")])
    run = _outcome(ids=["a", "b", "b"], states=[_state("p", ["a", "b"])],
                   trends=[_trend("e1"), _trend("e1"), _trend("e3")])
    verdict = compare(ref, run, input_ids={"a", "b", "c"})
    assert verdict["reviews_lost"] == 2  # c: never scored, and missing from the state
    assert (verdict["trend_events_missing"], verdict["trend_events_unexpected"],
            verdict["trend_events_duplicated"]) == (1, 1, 1)
    assert verdict["duplicates_identical"] and verdict["scores_redelivered"] == 1
    assert verdict["states_differing"] == 1
    assert not passed(verdict, exactly_once=False)


def test_a_repeated_event_that_is_not_an_exact_copy_fails_at_least_once() -> None:
    ref = _outcome(ids=["a"], states=[_state("p", ["a"])], trends=[_trend("e1")])
    run = _outcome(ids=["a"], states=[_state("p", ["a"])],
                   trends=[_trend("e1"), _trend("e1", "other")])
    verdict = compare(ref, run, input_ids={"a"})
    assert not verdict["duplicates_identical"] and not passed(verdict, exactly_once=False)
    same = _outcome(ids=["a"], states=[_state("p", ["a"])], trends=[_trend("e1")] * 2)
    assert passed(compare(ref, same, input_ids={"a"}), exactly_once=False)
    assert not passed(compare(ref, same, input_ids={"a"}), exactly_once=True)


def test_reviews_reaching_the_aggregator_out_of_offset_order_count_as_lost() -> None:
    """Offsets 2-3 first arrive after 4-5 (a stage skipped them, then re-read them)."""
    ref = _outcome(ids=["a"], states=[_state("p", ["a"])], trends=[],
                   batches=[[0, 1, 2, 3, 4, 5]])
    run = _outcome(ids=["a"], states=[_state("p", ["a"])], trends=[],
                   batches=[[0, 1], [4, 5], [2, 3, 4, 5]])
    assert compare(ref, ref, input_ids={"a"})["reviews_lost"] == 0
    assert compare(ref, run, input_ids={"a"})["reviews_lost"] == 2


def test_the_state_comparison_ignores_evaluation_progress_only() -> None:
    ref_key, ref_raw = _state("p", ["a"])
    moved = ProductState.from_bytes(ref_raw)
    moved.evaluated_through_day = 17_005
    other = ProductState.from_bytes(ref_raw)
    other.trend = "rising"
    ref = _outcome(ids=["a"], states=[(ref_key, ref_raw)], trends=[])
    for state, differing in ((moved, 0), (other, 1)):
        run = _outcome(ids=["a"], states=[(ref_key, state.to_bytes())], trends=[])
        assert compare(ref, run, input_ids={"a"})["states_differing"] == differing


@pytest.fixture(scope="module")
def rows() -> list[dict[str, object]]:
    return [{"review_id": f"r{i}", "product_id": f"p{i % 7}",
             "ts": f"2017-{1 + i // 600:02d}-{1 + (i // 24) % 25:02d}T{i % 24:02d}:00:00Z",
             "text": f"Review number {i}: it does what it says, \"quoted\" and caf\u00e9.",
             "rating": 4, "title": None} for i in range(3000)]


def test_every_hostile_score_stage_record_gets_the_reason_it_is_meant_to(rows: list) -> None:
    records, _, expected = hostile_plan(rows, n_bad=2000, seed=3, max_event_bytes=8192,
                                     allowed_lateness_s=172_800,
                                     now=datetime(2026, 12, 4, tzinfo=UTC), at_limit=4)
    assert sum(expected.reasons.values()) == 2000
    assert {"duplicate_conflict", "late", "too_large", "control_characters",
            "ts_out_of_range", "key_mismatch", "invalid_utf8"} <= expected.reasons.keys()
    checked: Counter[str] = Counter()
    for key, value in records:
        reason = expected.score_stage.get("" if value is None else
                                          hashlib.sha256(value).hexdigest())
        if reason is None:
            continue
        with pytest.raises(EventError) as err:
            parse_review(value, key=key, max_event_bytes=8192,
                         latest_ts=datetime(2026, 12, 5, tzinfo=UTC))
        assert err.value.reason == reason, (value[:120], err.value.detail)
        checked[reason] += 1
    assert sum(checked.values()) == sum(expected.reasons.values()) - \
        expected.reasons["duplicate_conflict"] - expected.reasons["late"]
    at_limit = [v for k, v in records if k and k.startswith(b"hostile-at-limit-")]
    assert len(at_limit) == 4 and all(len(v) == 8192 for v in at_limit)
    for value in at_limit:
        parse_review(value, key=None, max_event_bytes=8192)  # at the limit: good


def test_the_stall_watch_fires_only_when_no_partition_moves_and_records_wait() -> None:
    from collections import namedtuple

    from stream.app import StallWatch
    tp = namedtuple("TP", "topic partition")
    a, b, c = tp("reviews", 0), tp("reviews", 1), tp("reviews", 2)
    watch = StallWatch(after_s=30)
    assert watch.stalled({a: (5, 100), b: (7, 7), c: (0, 50)}, now=0) == []
    assert watch.stalled({a: (5, 100), b: (7, 7), c: (10, 50)}, now=29) == []  # c moved
    assert watch.stalled({a: (5, 100), b: (7, 7), c: (10, 50)}, now=31) == []  # a waits
    assert watch.stalled({a: (5, 100), b: (7, 7), c: (10, 50)}, now=60) == [
        "reviews[0]@5<100", "reviews[2]@10<50"]  # nothing moved for 31 s
    caught_up = StallWatch(after_s=30)
    assert caught_up.stalled({b: (7, 7)}, now=0) == caught_up.stalled({b: (7, 7)}, now=99) == []
    watch.reset()
    assert watch.stalled({a: (5, 100)}, now=70) == []
