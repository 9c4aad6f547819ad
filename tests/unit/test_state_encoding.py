"""The compact product-state record: exact round trip, its size, and its guards."""

from __future__ import annotations

import pytest

from stream.windows import (
    STATE_VERSION,
    ProductState,
    content_key,
    partition_of_state,
    quantize_score,
)


def _state() -> ProductState:
    state = ProductState("prod-é", 5, trend="falling", category="Electronics", is_alerted=True,
                         evaluated_through_day=17_500)
    for day in (17_480, 17_490, 17_500):
        for i in range(3):
            state.add((f"rev-{day}-{i}", f"{day:08x}{i:08x}", 0.123456789 * (i + 1), 4.5), day)
    state.add(("no-score", "00ff00ff00ff00ff", None, None), 17_500)
    return state


def test_round_trip_is_exact_after_the_rounding_at_add() -> None:
    """Decoding gives back the same reviews, trend, flags and days, and decodes to itself."""
    state = _state()
    raw = state.to_bytes()
    back = ProductState.from_bytes(raw)
    assert back == state
    assert back.buckets == state.buckets
    assert back.to_bytes() == raw
    back.add(("late-add", "ab" * 8, 0.25, 2.0), 17_490)  # re-encodes day 17490 only
    fresh = ProductState.from_bytes(back.to_bytes())
    assert fresh == back
    assert fresh.buckets[17_490][-1] == ("late-add", "abababab", quantize_score(0.25), 2.0)
    assert fresh.to_bytes() == back.to_bytes()
    assert partition_of_state(raw) == 5
    assert back.has("no-score") and not back.has("missing")


def test_size_is_ten_bytes_per_review_plus_its_id() -> None:
    """10 reviews with 8-to-14-char ids: 17 B header + 2 texts + 10 B/review + id bytes."""
    state = _state()
    ids = sum(len(r[0]) for b in state.buckets.values() for r in b)
    expected = 17 + (2 + len("prod-é".encode())) + (2 + 11) + 10 * 10 + ids
    assert len(state.to_bytes()) == expected


def test_other_version_and_non_hex_content_are_handled() -> None:
    """An unknown version is refused; a non-hex content string is hashed to a 16-hex key."""
    raw = bytearray(_state().to_bytes())
    raw[0] = STATE_VERSION + 1
    with pytest.raises(ValueError, match="version"):
        ProductState.from_bytes(bytes(raw))
    key = content_key("not hex at all")
    assert len(key) == 8 and int(key, 16) >= 0
    assert content_key("0123456789abcdefXYZ") == "01234567"


def test_a_review_id_of_300_bytes_round_trips() -> None:
    """Ids of 255 bytes and more take the long length form."""
    state = ProductState("p", 0)
    state.add(("é" * 150, "0" * 16, 0.5, None), 100)
    state.add(("x" * 255, "1" * 16, None, 3.0), 101)
    assert ProductState.from_bytes(state.to_bytes()) == state


def test_the_change_that_entered_the_trend_round_trips_after_the_reviews() -> None:
    """since_day and last_event_id take 20 bytes after the reviews; without them, none."""
    plain = _state()
    state = _state()
    state.since_day, state.last_event_id = 17_490, "0123456789abcdef" * 2
    raw = state.to_bytes()
    assert len(raw) == len(plain.to_bytes()) + 20
    assert raw.startswith(plain.to_bytes()[:3])  # version and partition unchanged
    back = ProductState.from_bytes(raw)
    assert (back.since_day, back.last_event_id) == (17_490, "0123456789abcdef" * 2)
    assert back == state and back.to_bytes() == raw
    assert ProductState.from_bytes(plain.to_bytes()).since_day is None


def test_a_record_without_the_change_decodes_and_a_bad_event_id_is_refused() -> None:
    """A record written before the change was kept decodes with since None; ids are 32 hex."""
    old = _state()
    back = ProductState.from_bytes(old.to_bytes())
    assert (back.since_day, back.last_event_id) == (None, None)
    bad = _state()
    bad.since_day, bad.last_event_id = 1, "abc"
    with pytest.raises(ValueError, match="32 lowercase hex"):
        bad.to_bytes()
