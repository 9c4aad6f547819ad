"""The aggregation step on dict tables: lateness, dedup, idle products, partitions."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from stream.aggregation import Aggregator, DictStore
from stream.events import ReviewScore
from stream.trends import DetectorParams
from stream.windows import ProductState

START = datetime(2017, 1, 1, tzinfo=UTC)
DAY_MS = 86_400_000
_OFFSETS = itertools.count()


def _score(pid: str, day: int, i: int = 0, *, sha: str = "h",
           offset: int | None = None) -> ReviewScore:
    """A scored review; each call is a new input record (next offset) unless told."""
    return ReviewScore(review_id=f"{pid}-{day}-{i}", product_id=pid,
                       ts=START + timedelta(days=day, hours=12), score=0.5, is_text_used=True,
                       unk_ratio=0.0, n_tokens=10, is_truncated=False, rating=4.0,
                       content_sha256=sha, model_id="m", source_partition=0,
                       source_offset=next(_OFFSETS) if offset is None else offset)


def day_of_ts(day: int) -> int:
    return int((START + timedelta(days=day)).timestamp() * 1000) // DAY_MS


def _aggregator(lateness_days: int = 2) -> Aggregator:
    return Aggregator(params=DetectorParams(), model_id="m",
                      allowed_lateness_ms=lateness_days * DAY_MS, evidence_k=3,
                      windows=DictStore(), clocks=DictStore())


def test_late_event_is_rejected_and_in_time_event_accepted() -> None:
    """With 2 days of lateness, day 13 closes day 10: a day-10 review is late, day 11 is not."""
    agg = _aggregator()
    assert agg.on_score(0, _score("a", 10)).is_accepted
    assert agg.on_score(0, _score("a", 13)).is_accepted
    late = agg.on_score(0, _score("a", 10, 1))
    assert late.rejected is not None and late.rejected.reason == "late"
    assert agg.on_score(0, _score("a", 11, 1)).is_accepted


def test_redelivery_after_its_day_closed_is_a_duplicate_not_late() -> None:
    """Scores re-read after a crash: a counted review is skipped even once its day closed."""
    agg = _aggregator()
    assert agg.on_score(0, _score("a", 10)).is_accepted
    assert agg.on_score(0, _score("a", 13)).is_accepted  # closes day 10
    again = agg.on_score(0, _score("a", 10))
    assert again.is_duplicate and again.rejected is None
    conflict = agg.on_score(0, _score("a", 10, sha="other"))
    assert conflict.rejected is not None and conflict.rejected.reason == "duplicate_conflict"


def test_redelivery_whose_bucket_left_the_window_is_a_duplicate_by_offset() -> None:
    """A crash long before the next commit: the redelivered review's bucket was evicted, so
    its id is forgotten; its input offset was applied, so it is a duplicate, not late. A
    new record (a later offset) for that closed day is still late."""
    agg = _aggregator()
    first = _score("a", 10, offset=5)
    assert agg.on_score(0, first).is_accepted
    assert agg.on_score(0, _score("a", 400, offset=6)).is_accepted  # evicts day 10
    assert not agg._state("a").has(first.review_id)
    again = agg.on_score(0, first)
    assert again.is_duplicate and again.rejected is None
    fresh = agg.on_score(0, _score("a", 10, 1, offset=7))
    assert fresh.rejected is not None and fresh.rejected.reason == "late"


def test_a_duplicate_moves_stream_time_as_its_first_delivery_did() -> None:
    """States written, clock not (a crash between the two): the redelivered reviews close
    the same days as the first time, so the trend calls come at the same reviews."""
    windows, clocks = DictStore(), DictStore()
    agg = Aggregator(params=DetectorParams(), model_id="m", allowed_lateness_ms=0,
                     evidence_k=3, windows=windows, clocks=clocks)
    batch = [_score("a", d, i) for d in range(30) for i in range(3)]
    for s in batch:
        agg.on_score(0, s)
    agg.flush_states()  # the crash comes before flush_clocks
    closed_before = agg._clock(0).closed_through_day
    restarted = Aggregator(params=DetectorParams(), model_id="m", allowed_lateness_ms=0,
                           evidence_k=3, windows=windows, clocks=clocks)
    results = [restarted.on_score(0, s) for s in batch]
    assert all(r.is_duplicate for r in results)
    assert restarted._clock(0).closed_through_day == closed_before == day_of_ts(28)


def test_duplicate_skipped_and_conflict_rejected() -> None:
    """A re-sent review is skipped; the same review_id with other content is rejected."""
    agg = _aggregator()
    assert agg.on_score(0, _score("a", 5)).is_accepted
    again = agg.on_score(0, _score("a", 5))
    assert again.is_duplicate and not again.is_accepted and again.rejected is None
    conflict = agg.on_score(0, _score("a", 5, sha="other"))
    assert conflict.rejected is not None and conflict.rejected.reason == "duplicate_conflict"


def test_idle_product_turns_falling_from_other_products_events() -> None:
    """Product A stops at day 179; B's events on the same partition close A's days: falling."""
    agg = _aggregator(lateness_days=0)
    changes = []
    for day in range(400):
        if day < 180:
            for i in range(2):
                changes += agg.on_score(0, _score("A", day, i)).changes
        changes += agg.on_score(0, _score("B", day)).changes
    a_changes = [(c.previous_state, c.new_state, c.window_end.date().isoformat())
                 for c in changes if c.product_id == "A"]
    assert a_changes == [("stable", "rising", "2017-01-11"), ("rising", "stable", "2017-03-20"),
                         ("stable", "falling", "2017-07-13")]


def test_other_partition_does_not_advance_time() -> None:
    """Stream time is per partition: events on partition 1 do not close partition 0's days."""
    agg = _aggregator(lateness_days=0)
    for day in range(180):
        for i in range(2):
            agg.on_score(0, _score("A", day, i))
    changes = [c for day in range(180, 400) for c in agg.on_score(1, _score("B", day)).changes]
    assert [c for c in changes if c.product_id == "A"] == []
    ticked = agg.on_tick(0, int((START + timedelta(days=400)).timestamp() * 1000))
    assert ticked.changes[-1].new_state == "falling"


def test_state_survives_a_restart_from_the_tables() -> None:
    """A new Aggregator over the same tables (a restart) continues with identical events."""
    one = _aggregator(lateness_days=0)
    events_one = [c for d in range(250) for c in one.on_score(0, _score("A", d)).changes]
    two_first = _aggregator(lateness_days=0)
    events_two = [c for d in range(120) for c in two_first.on_score(0, _score("A", d)).changes]
    two_first.flush()  # the worker flushes after every micro-batch, before it commits
    restarted = Aggregator(params=DetectorParams(), model_id="m", allowed_lateness_ms=0,
                           evidence_k=3, windows=two_first.windows, clocks=two_first.clocks)
    events_two += [c for d in range(120, 250)
                   for c in restarted.on_score(0, _score("A", d)).changes]
    assert [e.event_id for e in events_one] == [e.event_id for e in events_two]
    assert len(events_one) >= 1


def test_one_write_per_changed_product_per_batch() -> None:
    """A batch of 50 reviews of 2 products writes 2 states and 1 clock, not 50 records."""
    agg = _aggregator()
    for i in range(25):
        agg.on_score(0, _score("A", 10, i))
        agg.on_score(0, _score("B", 10, i))
    assert agg.flush() == 3
    assert sorted(agg.windows) == ["A", "B"]
    assert agg.flush() == 0  # nothing changed since


def test_idle_product_state_expires_after_the_setting() -> None:
    """With expiry 200 days, A (silent since day 0) is deleted once day 200 closes; B is kept."""
    agg = Aggregator(params=DetectorParams(), model_id="m", allowed_lateness_ms=0, evidence_k=3,
                     windows=DictStore(), clocks=DictStore(), expire_after_days=200)
    for i in range(3):
        agg.on_score(0, _score("A", 0, i))
    agg.flush()
    for day in range(1, 202):
        agg.on_score(0, _score("B", day))
        agg.flush()
        if day == 200:
            assert "A" in agg.windows  # day 200 is not closed yet (it closes on day 201)
    assert "A" not in agg.windows and "B" in agg.windows
    assert agg.on_score(0, _score("A", 202)).is_accepted  # a new review starts it afresh
    agg.flush()
    state = ProductState.from_bytes(agg.windows["A"])
    assert state.trend == "stable" and list(state.buckets) == [day_of_ts(202)]


def test_bounded_cache_gives_the_same_events_as_an_unbounded_one() -> None:
    """Decoding states from the store (cache of 1) changes nothing: same event_ids."""
    def run(cache_size: int) -> list[str]:
        agg = Aggregator(params=DetectorParams(), model_id="m", allowed_lateness_ms=0,
                         evidence_k=3, windows=DictStore(), clocks=DictStore(),
                         cache_size=cache_size)
        ids = []
        for day in range(300):
            for pid, n in (("A", 2 if day < 150 else 0), ("B", 1), ("C", 3 if day > 100 else 1)):
                for i in range(n):
                    ids += [c.event_id for c in agg.on_score(0, _score(pid, day, i)).changes]
            agg.flush()
        return ids
    unbounded = run(10_000)
    assert len(unbounded) >= 2
    assert run(1) == unbounded
