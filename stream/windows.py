"""Per-product event-time window state, and the per-partition stream clock. Pure.

A product's state is a set of daily UTC buckets, each holding its reviews as
``(review_id, content_sha256, score or None, rating or None)``. It is stored as one
small record per day plus a meta record, so adding a review rewrites one day, not the
whole window (a hot product's window can hold thousands of reviews). Aggregates (counts,
means) are derived at evaluation time from the reviews sorted by review_id, so the
result does not depend on arrival order and a re-delivered review is recognized by its
id (idempotent state). Buckets older than the detector's lookback are evicted.

Stream time is per partition: the largest event time seen there. Day ``D`` is *closed*
once the watermark (stream time minus the allowed lateness) reaches the end of ``D``;
an event whose day is already closed is late and goes to the DLQ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final, Literal

from stream.events import MS_PER_DAY, day_of

Review = tuple[str, str, float | None, float | None]
"""(review_id, content_sha256, score when the text was readable, rating)."""

AddOutcome = Literal["added", "duplicate", "conflict"]

STATE_VERSION: Final = 1


@dataclass(slots=True)
class ProductState:
    """Window state and trend state of one product (a value in the changelogged table)."""

    product_id: str
    partition: int
    trend: str = "stable"
    category: str | None = None
    is_alerted: bool = False  # a sharp-drop alert went out in the current falling episode
    evaluated_through_day: int | None = None
    last_review_day: int | None = None
    buckets: dict[int, list[Review]] = field(default_factory=dict)
    _content_by_id: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._content_by_id = {r[0]: r[1] for b in self.buckets.values() for r in b}

    def add(self, review: Review, day: int) -> AddOutcome:
        """Add one review to its day's bucket; idempotent by review_id."""
        known = self._content_by_id.get(review[0])
        if known is not None:
            return "duplicate" if known == review[1] else "conflict"
        self.buckets.setdefault(day, []).append(review)
        self._content_by_id[review[0]] = review[1]
        if self.last_review_day is None or day > self.last_review_day:
            self.last_review_day = day
        return "added"

    def has(self, review_id: str) -> bool:
        """True when the window holds this review_id."""
        return review_id in self._content_by_id

    def reviews_between(self, first_day: int, last_day: int) -> list[Review]:
        """Reviews of days first_day..last_day (inclusive), sorted by review_id."""
        found = [r for d, b in self.buckets.items() if first_day <= d <= last_day for r in b]
        return sorted(found)

    def evict_before(self, day: int) -> list[int]:
        """Drop buckets of days before ``day`` (outside every future window); return them."""
        evicted = [d for d in self.buckets if d < day]
        for old in evicted:
            for review in self.buckets.pop(old):
                del self._content_by_id[review[0]]
        return evicted

    def meta_bytes(self) -> bytes:
        """Everything but the buckets' contents (which days exist, trend, progress)."""
        return json.dumps({"v": STATE_VERSION, "p": self.product_id, "part": self.partition,
                           "t": self.trend, "c": self.category, "a": self.is_alerted,
                           "e": self.evaluated_through_day, "l": self.last_review_day,
                           "days": sorted(self.buckets)},
                          separators=(",", ":")).encode()

    def bucket_bytes(self, day: int) -> bytes:
        """One day's reviews as compact JSON."""
        return json.dumps(self.buckets[day], separators=(",", ":")).encode()

    @staticmethod
    def days_in(meta: bytes) -> list[int]:
        """The bucket days a meta record lists."""
        return list(json.loads(meta)["days"])

    @classmethod
    def from_parts(cls, meta: bytes, buckets: dict[int, bytes]) -> ProductState:
        """Rebuild a state from its meta record and its day buckets."""
        body = json.loads(meta)
        if body.get("v") != STATE_VERSION:
            msg = f"product state version {body.get('v')!r} is not {STATE_VERSION}"
            raise ValueError(msg)
        decoded = {d: [(r[0], r[1], r[2], r[3]) for r in json.loads(buckets[d])]
                   for d in body["days"]}
        return cls(product_id=body["p"], partition=body["part"], trend=body["t"],
                   category=body.get("c"), is_alerted=body.get("a", False),
                   evaluated_through_day=body["e"],
                   last_review_day=body["l"], buckets=decoded)


@dataclass(slots=True)
class PartitionClock:
    """Stream time of one partition: max event time seen, and the last closed day."""

    stream_time_ms: int | None = None
    closed_through_day: int | None = None

    def is_late(self, ts_ms: int) -> bool:
        """True when the event's day was already closed (evaluated)."""
        return self.closed_through_day is not None and day_of(ts_ms) <= self.closed_through_day

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
        return json.dumps([self.stream_time_ms, self.closed_through_day]).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> PartitionClock:
        stream_time_ms, closed = json.loads(raw)
        return cls(stream_time_ms=stream_time_ms, closed_through_day=closed)


def day_start_ms(day: int) -> int:
    """Epoch milliseconds at 00:00 UTC of a day index."""
    return day * MS_PER_DAY
