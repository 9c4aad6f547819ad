"""Per-product event-time window state, and the per-partition stream clock. Pure.

A product's state is a set of daily UTC buckets, each holding its reviews as
``(review_id, content key, score or None, rating or None)``. Aggregates (counts, means)
are derived at evaluation time from the reviews sorted by review_id, so the result does
not depend on arrival order, and a re-delivered review is recognized by its id
(idempotent state). Buckets older than the detector's lookback are evicted.

The state of one product is ONE compact binary record (:meth:`ProductState.to_bytes`):
10 bytes per review plus its review_id (2 day, 1 id length, 4 content key, 2 score,
1 rating), so a million products with a month of daily reviews and 16-character
ids take about 800 MB. Scores are kept to 1/65534 and ratings to 1/50 of a star, rounded
when a review is added, so a state decoded after a restart is exactly the state that was
encoded. A product whose trend has changed also keeps the change that entered its
current trend (its window end's day and event_id): 20 bytes after the reviews, flagged in
the header, so a record without them (written before they were kept) still decodes, and
a decoder that does not know them reads the rest unchanged. The content key is the
first 8 hex digits of the review's content sha256: a different text under a known
review_id is a conflict (a 1 in 2**32 chance of reading one as a plain duplicate).

Stream time is per partition: the largest event time seen there. Day ``D`` is *closed*
once the watermark (stream time minus the allowed lateness) reaches the end of ``D``;
an event whose day is already closed is late and goes to the DLQ.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Final, Literal

from stream.events import MS_PER_DAY, day_of

Review = tuple[str, str, float | None, float | None]
"""(review_id, content key, score when the text was readable, rating)."""

AddOutcome = Literal["added", "duplicate", "conflict"]

STATE_VERSION: Final = 2
TRENDS: Final = ("stable", "rising", "falling")
SCORE_STEPS: Final = 65534  # 0xFFFF means "no score"
RATING_STEPS: Final = 50  # per star; 0xFF means "no rating"
# version, partition, trend, flags, evaluated through, last review day, reviews
_HEAD: Final = struct.Struct("<BHBBiiI")
_TEXT: Final = struct.Struct("<H")
_DAY: Final = struct.Struct("<H")  # a review's day: days since 1970-01-01
MAX_DAY: Final = 0xFFFF  # 2149-06-06; the parser admits nothing before 1990 or far ahead
_REVIEW_TAIL: Final = struct.Struct("<4sHB")  # content key, score, rating
_NO_TEXT: Final = 0xFFFF
_NO_DAY: Final = -(2**31)
_ALERTED, _HAS_EVAL, _HAS_LAST, _HAS_SINCE = 1, 2, 4, 8
_SINCE: Final = struct.Struct("<i16s")  # window end day and event_id of the last change


def quantize_score(score: float | None) -> float | None:
    """The score as the state stores it."""
    return None if score is None else round(score * SCORE_STEPS) / SCORE_STEPS


def quantize_rating(rating: float | None) -> float | None:
    """The rating as the state stores it."""
    return None if rating is None else round(rating * RATING_STEPS) / RATING_STEPS


def content_key(content_sha256: str) -> str:
    """8 lowercase hex digits: the content hash's head (other strings are hashed first)."""
    head = content_sha256[:8]
    if len(head) == 8 and all(c in "0123456789abcdef" for c in head):
        return head
    return hashlib.sha256(content_sha256.encode()).hexdigest()[:8]


def partition_of_state(raw: bytes) -> int:
    """The partition a state record belongs to, read from its header alone."""
    return int(_HEAD.unpack_from(raw)[1])


@dataclass(slots=True)
class ProductState:
    """Window state and trend state of one product (one value in the changelogged table)."""

    product_id: str
    partition: int
    trend: str = "stable"
    category: str | None = None
    is_alerted: bool = False  # a sharp-drop alert went out in the current falling episode
    evaluated_through_day: int | None = None
    last_review_day: int | None = None
    buckets: dict[int, list[Review]] = field(default_factory=dict)
    # the TrendChange that entered the current trend: its window end (a day index) and
    # event_id; None while the product has kept its first trend (stable)
    since_day: int | None = None
    last_event_id: str | None = None
    _content_by_id: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    _encoded: dict[int, bytes] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._content_by_id = {r[0]: r[1] for b in self.buckets.values() for r in b}

    def add(self, review: Review, day: int) -> AddOutcome:
        """Add one review to its day's bucket; idempotent by review_id.

        The stored review is rounded as the encoding keeps it (see the module docstring).
        """
        review_id, content = review[0], content_key(review[1])
        known = self._content_by_id.get(review_id)
        if known is not None:
            return "duplicate" if known == content else "conflict"
        if not 0 <= day <= MAX_DAY:
            raise ValueError(f"day {day} is outside 0..{MAX_DAY} (1970-01-01..2149-06-06)")
        stored = (review_id, content, quantize_score(review[2]), quantize_rating(review[3]))
        self.buckets.setdefault(day, []).append(stored)
        self._encoded.pop(day, None)
        self._content_by_id[review_id] = content
        if self.last_review_day is None or day > self.last_review_day:
            self.last_review_day = day
        return "added"

    def has(self, review_id: str) -> bool:
        """True when the window holds this review_id."""
        return review_id in self._content_by_id

    def reviews_between(self, first_day: int, last_day: int) -> list[Review]:
        """Reviews of days first_day..last_day (inclusive), in no promised order (the
        detector's means are exactly rounded sums and its evidence sorts by review_id)."""
        return [r for d, b in self.buckets.items() if first_day <= d <= last_day for r in b]

    def evict_before(self, day: int) -> list[int]:
        """Drop buckets of days before ``day`` (outside every future window); return them."""
        evicted = [d for d in self.buckets if d < day]
        for old in evicted:
            self._encoded.pop(old, None)
            for review in self.buckets.pop(old):
                del self._content_by_id[review[0]]
        return evicted

    def to_bytes(self) -> bytes:
        """The whole state as one compact binary record (reviews in day order).

        Each day's reviews are encoded once and kept until that day changes, so writing a
        hot product after a batch re-encodes only the days the batch touched.
        """
        has_since = self.since_day is not None and self.last_event_id is not None
        flags = (_ALERTED if self.is_alerted else 0) | \
            (_HAS_EVAL if self.evaluated_through_day is not None else 0) | \
            (_HAS_LAST if self.last_review_day is not None else 0) | \
            (_HAS_SINCE if has_since else 0)
        parts = [_HEAD.pack(STATE_VERSION, self.partition, TRENDS.index(self.trend), flags,
                            _NO_DAY if self.evaluated_through_day is None
                            else self.evaluated_through_day,
                            _NO_DAY if self.last_review_day is None else self.last_review_day,
                            sum(len(b) for b in self.buckets.values())),
                 _text(self.product_id), _text(self.category)]
        for day in sorted(self.buckets):
            chunk = self._encoded.get(day)
            if chunk is None:
                chunk = self._encoded[day] = _encode_day(day, self.buckets[day])
            parts.append(chunk)
        if has_since:
            text = self.last_event_id or ""
            if len(text) != 32 or not all(c in "0123456789abcdef" for c in text):
                msg = f"last_event_id {text!r} is not 32 lowercase hex digits"
                raise ValueError(msg)
            event_id = bytes.fromhex(text)
            parts.append(_SINCE.pack(self.since_day, event_id))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes) -> ProductState:
        """Decode :meth:`to_bytes`; an unknown version raises ValueError."""
        if not raw or raw[0] != STATE_VERSION:
            msg = f"product state version {raw[:1]!r} is not {STATE_VERSION}"
            raise ValueError(msg)
        _, partition, trend, flags, evaluated, last, n = _HEAD.unpack_from(raw)
        pos = _HEAD.size
        product_id, pos = _read_text(raw, pos)
        category, pos = _read_text(raw, pos)
        buckets: dict[int, list[Review]] = {}
        encoded: dict[int, bytes] = {}
        day_of_review, tail_of = _DAY.unpack_from, _REVIEW_TAIL.unpack_from
        day_start, current = pos, None
        for _ in range(n):
            (day,) = day_of_review(raw, pos)
            if day != current:
                if current is not None:
                    encoded[current] = raw[day_start:pos]
                current, day_start = day, pos
            size = raw[pos + 2]
            pos += 3
            if size == 0xFF:
                (size,) = _TEXT.unpack_from(raw, pos)
                pos += 2
            review_id = raw[pos:pos + size].decode()
            pos += size
            content, score, rating = tail_of(raw, pos)
            pos += _REVIEW_TAIL.size
            buckets.setdefault(day, []).append(
                (review_id, content.hex(), None if score == _NO_TEXT else score / SCORE_STEPS,
                 None if rating == 0xFF else rating / RATING_STEPS))
        if current is not None:
            encoded[current] = raw[day_start:pos]
        since_day, event_id = _SINCE.unpack_from(raw, pos) if flags & _HAS_SINCE \
            else (None, None)
        assert product_id is not None
        state = cls(product_id=product_id, partition=partition, trend=TRENDS[trend],
                    category=category, is_alerted=bool(flags & _ALERTED),
                    evaluated_through_day=evaluated if flags & _HAS_EVAL else None,
                    last_review_day=last if flags & _HAS_LAST else None, buckets=buckets,
                    since_day=since_day, last_event_id=None if event_id is None
                    else event_id.hex())
        state._encoded = encoded
        return state


def _encode_day(day: int, reviews: list[Review]) -> bytes:
    parts = []
    prefix = _DAY.pack(day)
    for review_id, content, score, rating in reviews:
        raw_id = review_id.encode()
        parts.append(prefix)
        parts.append(bytes((len(raw_id),)) if len(raw_id) < 0xFF else
                     b"\xff" + _TEXT.pack(len(raw_id)))
        parts.append(raw_id)
        parts.append(_REVIEW_TAIL.pack(
            bytes.fromhex(content), _NO_TEXT if score is None else round(score * SCORE_STEPS),
            0xFF if rating is None else round(rating * RATING_STEPS)))
    return b"".join(parts)


def _text(value: str | None) -> bytes:
    if value is None:
        return _TEXT.pack(_NO_TEXT)
    raw = value.encode()
    return _TEXT.pack(len(raw)) + raw


def _read_text(raw: bytes, pos: int) -> tuple[str | None, int]:
    (size,) = _TEXT.unpack_from(raw, pos)
    pos += _TEXT.size
    if size == _NO_TEXT:
        return None, pos
    return raw[pos:pos + size].decode(), pos + size


@dataclass(slots=True)
class PartitionClock:
    """Stream time of one partition: max event time seen, the last closed day, and the
    highest input offset the aggregator has applied on it."""

    stream_time_ms: int | None = None
    closed_through_day: int | None = None
    applied_offset: int | None = None

    def is_late(self, ts_ms: int) -> bool:
        """True when the event's day was already closed (evaluated)."""
        return self.closed_through_day is not None and day_of(ts_ms) <= self.closed_through_day

    def was_applied(self, source_offset: int) -> bool:
        """True when a record at this input offset (of this partition) was applied before:
        a redelivery after a crash, not a late event."""
        return self.applied_offset is not None and source_offset <= self.applied_offset

    def applied(self, source_offset: int) -> None:
        if self.applied_offset is None or source_offset > self.applied_offset:
            self.applied_offset = source_offset

    def advance(self, ts_ms: int, *, allowed_lateness_ms: int) -> int | None:
        """Move stream time forward; return the new last closed day if it moved, else None."""
        if self.stream_time_ms is not None and ts_ms <= self.stream_time_ms:
            return None
        self.stream_time_ms = ts_ms
        closed = day_of(ts_ms - allowed_lateness_ms) - 1
        if self.closed_through_day is not None and closed <= self.closed_through_day:
            return None
        self.closed_through_day = closed
        return closed

    def to_bytes(self) -> bytes:
        return json.dumps([self.stream_time_ms, self.closed_through_day,
                           self.applied_offset]).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> PartitionClock:
        fields = json.loads(raw)  # two fields before the applied offset was kept
        return cls(*fields)


def day_start_ms(day: int) -> int:
    """Epoch milliseconds at 00:00 UTC of a day index."""
    return day * MS_PER_DAY
