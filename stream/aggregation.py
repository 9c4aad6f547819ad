"""The per-partition aggregation step: one scored review (or tick) in, state and outputs out.

Pure apart from the two mappings it is handed (the worker passes faust tables, the
backtest and the tests pass dicts). For a record of partition ``p``:

1. a review_id seen before is skipped (same content) or dead-lettered
   (``duplicate_conflict``), whether or not its day has closed since (a redelivery after a
   crash is not late); else a review whose day is already closed on ``p`` is
   dead-lettered as ``late``; otherwise it is added to its product's window;
   The window table holds one record per (product, day) plus one meta record per
   product, so a review rewrites one small day record, not the product's whole window;
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

from stream.events import ReviewScore, SharpDropAlert, TrendChange, day_of
from stream.trends import DetectorParams, Outputs, close_through
from stream.windows import PartitionClock, ProductState

TICK_KEY: Final = b"__tick__"
_META: Final = "\x1fmeta"


def _meta_key(product_id: str) -> str:
    return product_id + _META


def _bucket_key(product_id: str, day: int) -> str:
    return f"{product_id}\x1f{day}"


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
    alerts: list[SharpDropAlert] = field(default_factory=list)
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
    _states: dict[str, ProductState] = field(default_factory=dict)

    def forget_partitions(self) -> None:
        """Drop the index and decoded states: after a rebalance the tables are the truth."""
        self._products.clear()
        self._states.clear()

    def on_score(self, partition: int, score: ReviewScore) -> StepResult:
        """Apply one scored review, then advance the partition's stream time."""
        clock = self._clock(partition)
        result = StepResult()
        known = self._state(score.product_id)
        if known is not None and known.has(score.review_id):
            # a redelivery (at-least-once, e.g. after a crash) is a duplicate, even when its
            # day has closed since: the first delivery was counted
            self._add(partition, score, result)
            return result
        if clock.is_late(score.ts_ms):
            detail = (f"day {score.ts.date()} already closed on partition {partition} "
                      f"(closed through day {clock.closed_through_day})")
            result.rejected = Rejected("late", detail, score)
            return result
        self._add(partition, score, result)
        out = self._advance(partition, clock, score.ts_ms)
        result.changes, result.alerts = out.changes, out.alerts
        return result

    def on_tick(self, partition: int, timestamp_ms: int) -> StepResult:
        """Advance the partition's stream time to ``timestamp_ms`` (idle products)."""
        out = self._advance(partition, self._clock(partition), timestamp_ms)
        return StepResult(changes=out.changes, alerts=out.alerts)

    def _add(self, partition: int, score: ReviewScore, result: StepResult) -> None:
        state = self._state(score.product_id) or ProductState(score.product_id, partition)
        text_score = score.score if score.is_text_used else None
        day = day_of(score.ts_ms)
        is_new_day = day not in state.buckets
        outcome = state.add((score.review_id, score.content_sha256, text_score, score.rating),
                            day)
        if outcome == "conflict":
            detail = f"review_id {score.review_id!r} was seen before with other content"
            result.rejected = Rejected("duplicate_conflict", detail, score)
        elif outcome == "duplicate":
            result.is_duplicate = True
        else:
            self._states[state.product_id] = state
            self.windows[_bucket_key(state.product_id, day)] = state.bucket_bytes(day)
            is_new_category = score.category is not None and score.category != state.category
            if is_new_category:  # the latest category wins (it picks the seasonal profile)
                state.category = score.category
            if is_new_day or is_new_category:  # the meta lists the days: write it after the bucket
                self.windows[_meta_key(state.product_id)] = state.meta_bytes()
            self._products_of(partition).add(score.product_id)
            result.is_accepted = True

    def _advance(self, partition: int, clock: PartitionClock, ts_ms: int) -> Outputs:
        closed = clock.advance(ts_ms, allowed_lateness_ms=self.allowed_lateness_ms)
        out = Outputs()
        if closed is None:
            return out
        for product_id in sorted(self._products_of(partition)):
            state = self._state(product_id)
            if state is None:
                continue
            days_before = set(state.buckets)
            found = close_through(state, closed, self.params, model_id=self.model_id,
                                  evidence_k=self.evidence_k)
            evicted = days_before - set(state.buckets)
            if found.changes or found.alerts or evicted:  # else a re-run finds nothing either
                for day in evicted:
                    del self.windows[_bucket_key(product_id, day)]
                self.windows[_meta_key(product_id)] = state.meta_bytes()
            out.extend(found)
        self.clocks[str(partition)] = clock.to_bytes()
        return out

    def _state(self, product_id: str) -> ProductState | None:
        state = self._states.get(product_id)
        if state is None:
            meta = self.windows.get(_meta_key(product_id))
            if meta is None:
                return None
            buckets = {d: self.windows[_bucket_key(product_id, d)]
                       for d in ProductState.days_in(meta)}
            state = self._states[product_id] = ProductState.from_parts(meta, buckets)
        return state

    def _clock(self, partition: int) -> PartitionClock:
        raw = self.clocks.get(str(partition))
        return PartitionClock.from_bytes(raw) if raw else PartitionClock()

    def _products_of(self, partition: int) -> set[str]:
        known = self._products.get(partition)
        if known is None:
            known = {key[:-len(_META)] for key, raw in self.windows.items()
                     if key.endswith(_META) and json.loads(raw)["part"] == partition}
            self._products[partition] = known
        return known
