"""trend-state records: one TrendState per change, a tombstone with its position on expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from stream.aggregation import Aggregator, DictStore, StepResult
from stream.events import ReviewScore, TrendState
from stream.trends import DetectorParams
from stream.trendstate import WINDOW_END_HEADER, change_position, position_of, state_records

START = datetime(2017, 1, 1, tzinfo=UTC)


def _score(pid: str, day: int, i: int, offset: int) -> ReviewScore:
    return ReviewScore(review_id=f"{pid}-{day}-{i}", product_id=pid,
                       ts=START + timedelta(days=day, hours=12), score=0.5, is_text_used=True,
                       unk_ratio=0.0, n_tokens=10, is_truncated=False, rating=4.0,
                       content_sha256="h", model_id="m", source_partition=0,
                       source_offset=offset)


def _run(expire_after_days: int) -> list[StepResult]:
    """A: 2 reviews/day for days 0-179 then silence; B: 1/day to day 399 (moves the clock)."""
    agg = Aggregator(params=DetectorParams(), model_id="m", allowed_lateness_ms=0,
                     evidence_k=3, windows=DictStore(), clocks=DictStore(),
                     expire_after_days=expire_after_days)
    scores = [_score("A", d, i, 0) for d in range(180) for i in range(2)]
    scores += [_score("B", d, 0, 0) for d in range(400)]
    scores.sort(key=lambda s: (s.ts, s.review_id))
    results = []
    for offset, score in enumerate(scores):
        results.append(agg.on_score(0, score.model_copy(update={"source_offset": offset})))
        agg.flush()
    return results


def test_each_change_gives_its_trend_state_and_expiry_a_tombstone_after_them() -> None:
    """A's three changes, then A forgotten at day 280's close (expiry 100); B's two changes."""
    results = _run(expire_after_days=100)
    changes = [c for r in results for c in r.changes]
    records = [rec for r in results for rec in state_records(r)]
    assert [(r.product_id, r.value is None) for r in records] == \
        [(c.product_id, False) for c in changes[:5]] + [("A", True)]
    states = [TrendState.model_validate_json(r.value) for r in records if r.value]
    assert [(s.product_id, s.previous_state, s.state, s.since, s.last_event_id)
            for s in states] == [(c.product_id, c.previous_state, c.new_state, c.window_end,
                                  c.event_id) for c in changes]
    assert states[0].signals == changes[0].signals and states[0].model_id == "m"
    tombstone = records[-1]
    # A's last review day 179 + 100 days = day 279 closes when the first review of day 280
    # arrives (lateness 0): the tombstone's position is that close's window end
    assert tombstone.headers == ((WINDOW_END_HEADER, b"2017-10-08T00:00:00Z"),)
    assert START + timedelta(days=280) == datetime(2017, 10, 8, tzinfo=UTC)
    _, forgotten = position_of(None, list(tombstone.headers))
    last_change_of_a = max(change_position(c.window_end).key() for c in changes
                           if c.product_id == "A")
    assert forgotten.is_forgotten and forgotten.key() > last_change_of_a


def test_the_records_are_the_same_on_a_replay() -> None:
    """Deterministic: a second run writes byte-identical records (a crash replays copies)."""
    first = [rec for r in _run(100) for rec in state_records(r)]
    assert first == [rec for r in _run(100) for rec in state_records(r)]


def test_no_tombstone_before_the_expiry_and_positions_decode() -> None:
    """With expiry 365 days nothing is forgotten by day 399; a record decodes to its position."""
    records = [rec for r in _run(365) for rec in state_records(r)]
    assert all(r.value is not None for r in records)
    state, position = position_of(records[0].value, None)
    assert state is not None and position == change_position(state.since)
    assert position_of(None, None)[1].key() == ("", True)  # a foreign tombstone: earliest
