"""The per-partition aggregation step: one scored review (or tick) in, state and outputs out.

Pure apart from the two mappings it is handed (the worker passes faust tables, the
backtest and the tests pass dicts). For a record of partition ``p``:

1. a review whose day is already closed on ``p`` is dead-lettered as ``late``;
   a review_id seen before is skipped (same content) or dead-lettered
   (``duplicate_conflict``); otherwise it is added to its product's window;
2. the partition's stream time advances; when that closes days, every product of
   ``p`` is evaluated at each newly closed day (so idle products can turn falling),
   and each state change becomes a TrendChange.

A tick (the worker's own idle-time record) only advances stream time.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Final

from stream.events import ReviewScore, TrendChange, day_of
from stream.trends import DetectorParams, close_through
from stream.windows import PartitionClock, ProductState

TICK_KEY: Final = b"__tick__"


def tick_record(timestamp_ms: int) -> bytes:
    """The value of a tick record (key TICK_KEY) on the scores topic."""
    return json.dumps({"tick_ms": timestamp_ms}).encode()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A scored review the aggregator refused, for the DLQ."""

    reason: str
    detail: str
    score: ReviewScore


@dataclass(slots=True)
class StepResult:
    """What one record produced."""

    changes: list[TrendChange] = field(default_factory=list)
    rejected: Rejected | None = None
    is_duplicate: bool = False
    is_accepted: bool = False


@dataclass(slots=True)
class Aggregator:
    """Applies records of any partition to the window and clock tables."""

    params: DetectorParams
    model_id: str
    allowed_lateness_ms: int
    evidence_k: int
    windows: MutableMapping[str, bytes]
    clocks: MutableMapping[str, bytes]
    _products: dict[int, set[str]] = field(default_factory=dict)

    def forget_partitions(self) -> None:
        """Drop the product index (after a rebalance it is rebuilt from the table)."""
        self._products.clear()

    def on_score(self, partition: int, score: ReviewScore) -> StepResult:
        """Apply one scored review, then advance the partition's stream time."""
        clock = self._clock(partition)
        result = StepResult()
        if clock.is_late(score.ts_ms):
            detail = (f"day {score.ts.date()} already closed on partition {partition} "
                      f"(closed through day {clock.closed_through_day})")
            result.rejected = Rejected("late", detail, score)
            return result
        self._add(partition, score, result)
        result.changes = self._advance(partition, clock, score.ts_ms)
        return result

    def on_tick(self, partition: int, timestamp_ms: int) -> list[TrendChange]:
        """Advance the partition's stream time to ``timestamp_ms`` (idle products)."""
        return self._advance(partition, self._clock(partition), timestamp_ms)

    def _add(self, partition: int, score: ReviewScore, result: StepResult) -> None:
        raw = self.windows.get(score.product_id)
        state = ProductState.from_bytes(raw) if raw else ProductState(score.product_id, partition)
        text_score = score.score if score.is_text_used else None
        outcome = state.add((score.review_id, score.content_sha256, text_score, score.rating),
                            day_of(score.ts_ms))
        if outcome == "conflict":
            detail = f"review_id {score.review_id!r} was seen before with other content"
            result.rejected = Rejected("duplicate_conflict", detail, score)
        elif outcome == "duplicate":
            result.is_duplicate = True
        else:
            self.windows[score.product_id] = state.to_bytes()
            self._products_of(partition).add(score.product_id)
            result.is_accepted = True

    def _advance(self, partition: int, clock: PartitionClock, ts_ms: int) -> list[TrendChange]:
        closed = clock.advance(ts_ms, allowed_lateness_ms=self.allowed_lateness_ms)
        if closed is None:
            return []
        changes: list[TrendChange] = []
        for product_id in sorted(self._products_of(partition)):
            state = ProductState.from_bytes(self.windows[product_id])
            changes += close_through(state, closed, self.params, model_id=self.model_id,
                                     evidence_k=self.evidence_k)
            self.windows[product_id] = state.to_bytes()
        self.clocks[str(partition)] = clock.to_bytes()
        return changes

    def _clock(self, partition: int) -> PartitionClock:
        raw = self.clocks.get(str(partition))
        return PartitionClock.from_bytes(raw) if raw else PartitionClock()

    def _products_of(self, partition: int) -> set[str]:
        known = self._products.get(partition)
        if known is None:
            known = {pid for pid, raw in self.windows.items()
                     if ProductState.from_bytes(raw).partition == partition}
            self._products[partition] = known
        return known
