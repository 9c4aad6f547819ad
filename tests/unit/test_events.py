"""Event validation: every kind of bad input gets its stable DLQ reason."""

from __future__ import annotations

import hashlib
import json

import pytest

from stream.errors import EventError
from stream.events import dead_letter, parse_review, trend_event_id
from stream.scoring import RawRecord, prepare

GOOD = {"review_id": "r1", "product_id": "p1", "ts": "2017-01-02T00:00:00Z", "text": "Great",
        "rating": 5, "title": None, "source": "datafiniti:bestbuy.com", "category": "x"}


def _raw(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_good_review_parses_with_unknown_fields_counted() -> None:
    """A valid review parses; an extra field is kept out of the model and counted."""
    event = parse_review(_raw(extra_field=1), key=b"p1", max_event_bytes=10_000)
    assert (event.review_id, event.rating, event.unknown_fields) == ("r1", 5.0, 1)
    assert event.ts.isoformat() == "2017-01-02T00:00:00+00:00"


@pytest.mark.parametrize(("raw", "key", "reason"), [
    (b"", b"p1", "empty_value"),
    (b"x" * 20_000, b"p1", "too_large"),
    (b"\xff\xfe{}", b"p1", "invalid_utf8"),
    (b'{"review_id": ', b"p1", "invalid_json"),
    (b"[1, 2]", b"p1", "not_an_object"),
    (_raw(schema_version=2), b"p1", "unsupported_schema_version"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "text"}).encode(), b"p1",
     "missing_field"),
    (_raw(rating="five"), b"p1", "wrong_type"),
    (_raw(review_id=7), b"p1", "wrong_type"),
    (_raw(rating=9), b"p1", "wrong_type"),
    (_raw(text=" \n\t"), b"p1", "empty_text"),
    (_raw(ts="yesterday"), b"p1", "bad_timestamp"),
    (_raw(ts="2017-01-02T00:00:00"), b"p1", "bad_timestamp"),
    (_raw(ts="1989-12-31T23:59:59Z"), b"p1", "ts_out_of_range"),
    (_raw(), b"p2", "key_mismatch"),
    # found by a hostile-input run: each of these once crashed the scoring agent
    (b"[" * 3000 + b"]" * 3000, b"p1", "invalid_json"),
    (_raw(extra=0).replace(b'"extra": 0', b'"extra": ' + b"9" * 5000), b"p1", "invalid_json"),
    (_raw(rating=10 ** 400), b"p1", "wrong_type"),
    (_raw(text="broken \ud800 surrogate"), b"p1", "invalid_utf8"),
    (_raw(ts="0001-01-01T00:00:00+01:00"), b"p1", "ts_out_of_range"),
    (_raw(ts="9999-12-31T23:59:59-01:00"), b"p1", "ts_out_of_range"),
])
def test_bad_input_reason(raw: bytes, key: bytes, reason: str) -> None:
    """Each malformed record raises EventError with the documented reason code."""
    with pytest.raises(EventError) as info:
        parse_review(raw, key=key, max_event_bytes=10_000)
    assert info.value.reason == reason


def test_far_future_time_is_out_of_range() -> None:
    """A time past the worker's clock + skew is refused; one at the limit is accepted."""
    from datetime import UTC, datetime
    limit = datetime(2017, 1, 2, tzinfo=UTC)
    assert parse_review(_raw(), key=None, max_event_bytes=10_000, latest_ts=limit)
    with pytest.raises(EventError) as info:
        parse_review(_raw(ts="2017-01-02T00:00:01Z"), key=None, max_event_bytes=10_000,
                     latest_ts=limit)
    assert info.value.reason == "ts_out_of_range"


def test_null_key_is_accepted() -> None:
    """A record without a key is re-keyed by its product_id downstream, not rejected."""
    assert parse_review(_raw(), key=None, max_event_bytes=10_000).product_id == "p1"


def test_prepare_keeps_good_events_and_dead_letters_bad_ones_with_position() -> None:
    """One bad record in a batch becomes a dead letter with partition and offset; the rest pass."""
    records = [RawRecord("reviews", 3, 10, b"p1", _raw()),
               RawRecord("reviews", 3, 11, b"p1", b"\xff" * 9000),
               RawRecord("reviews", 3, 12, b"p1", _raw(review_id="r2"))]
    out = prepare(records, max_event_bytes=10_000, max_raw_chars=100)
    assert [r.review_id for _, r in out.reviews] == ["r1", "r2"]
    (dead,) = out.dead
    assert (dead.reason, dead.partition, dead.offset, dead.stage) == ("invalid_utf8", 3, 11,
                                                                      "score")
    assert len(dead.raw_value or "") == 100
    assert dead.raw_sha256 == hashlib.sha256(b"\xff" * 9000).hexdigest()
    assert dead.raw_size_bytes == 9000


def test_a_text_the_scorer_fails_on_is_dead_lettered_and_the_rest_scored() -> None:
    """The batch call fails; each review is retried alone and only the bad one is dead-lettered."""
    import numpy as np

    from stream.inference import ScoredBatch
    from stream.scoring import score_prepared

    def score(texts: list[str]) -> ScoredBatch:
        if any("poison" in t for t in texts):
            raise TypeError("tokenizer cannot read this")
        n = len(texts)
        return ScoredBatch(np.full(n, 0.25, np.float32), np.zeros(n, np.float32),
                           np.full(n, 5, np.int32), np.zeros(n, bool))
    records = [RawRecord("reviews", 0, i, b"p1", _raw(review_id=f"r{i}", text=text))
               for i, text in enumerate(["fine", "poison pill", "also fine"])]
    out, dead = score_prepared(prepare(records, max_event_bytes=10_000, max_raw_chars=50),
                               score, model_id="m", max_raw_chars=50)
    assert [(s.review_id, s.score) for s in out] == [("r0", 0.25), ("r2", 0.25)]
    assert [(d.reason, d.offset, d.review_id) for d in dead] == [("unscorable", 1, "r1")]
    with pytest.raises(TypeError):  # every review fails: the scorer is broken, not the input
        score_prepared(prepare(records[1:2], max_event_bytes=10_000, max_raw_chars=50),
                       score, model_id="m", max_raw_chars=50)


def test_dead_letter_round_trips_as_json() -> None:
    """A dead letter serializes to JSON and back unchanged."""
    dl = dead_letter(reason="late", detail="d", stage="aggregate", topic="t", partition=1,
                     offset=2, key=None, raw=None, max_raw_chars=10)
    assert type(dl).model_validate_json(dl.to_bytes()).to_bytes() == dl.to_bytes()


def test_content_hash_and_event_id_are_deterministic() -> None:
    """Same content -> same hash; any field of the id changes the event_id."""
    a = parse_review(_raw(), key=b"p1", max_event_bytes=10_000)
    b = a.model_copy(update={"text": "Great!"})
    assert a.content_sha256() == parse_review(_raw(), key=None,
                                              max_event_bytes=10_000).content_sha256()
    assert a.content_sha256() != b.content_sha256()
    kwargs = {"product_id": "p", "previous_state": "stable", "new_state": "rising",
              "window_end": a.ts, "model_id": "m", "detector_version": "v"}
    assert trend_event_id(**kwargs) == trend_event_id(**kwargs)
    assert trend_event_id(**kwargs) != trend_event_id(**{**kwargs, "model_id": "m2"})
