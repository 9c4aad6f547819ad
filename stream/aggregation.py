"""The per-partition aggregation step: scored reviews (or ticks) in, state and outputs out.

Pure apart from the two stores it is handed (the worker passes faust tables, the
backtest and the tests pass :class:`DictStore`). For a record of partition ``p``:

1. a review_id seen before is skipped (same content) or dead-lettered
   (``duplicate_conflict``), whether or not its day has closed since (a redelivery after a
   crash is not late); else a review whose day is already closed on ``p`` is skipped
   as a redelivery when its input offset was applied before (its bucket has left the
   window since), else dead-lettered as ``late``; otherwise it is added to its
   product's window;
2. the partition's stream time advances; when that closes days, every product of
   ``p`` is evaluated at each newly closed day (so idle products can turn falling),
   and each state change becomes a TrendChange. A product with no review in its window
   and none for ``expire_after_days`` is forgotten (its record deleted, and a
   :class:`Forgotten` in the result: a tombstone on ``trend-state``).

A tick (the worker's own idle-time record) only advances stream time.

Writes are buffered: states and clocks changed by the records of one micro-batch are
written to the stores once each by :meth:`Aggregator.flush` (one table write per product
per batch, however many of its reviews the batch held); the worker writes states, waits
for them, then clocks (README, "Processing guarantees"). Decoded states are cached for at
most ``cache_size`` products; the stores hold the compact encoded records.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Protocol

from stream.events import ReviewScore, SharpDropAlert, TrendChange, day_of, from_ms
from stream.trends import DetectorParams, close_through
from stream.windows import (
    MAX_DAY,
    PartitionClock,
    ProductState,
    day_start_ms,
    partition_of_state,
)

TICK_KEY: Final = b"__tick__"
DEFAULT_CACHE_SIZE: Final = 20_000


def tick_record(timestamp_ms: int) -> bytes:
    """The value of a tick record (key TICK_KEY) on the scores topic."""
    return json.dumps({"tick_ms": timestamp_ms}).encode()


class StateStore(Protocol):
    """A key -> bytes table whose writes name the partition they belong to."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, partition: int, key: str, value: bytes) -> None: ...

    def delete(self, partition: int, key: str) -> None: ...

    def items(self) -> Iterable[tuple[str, bytes]]: ...


class DictStore(dict[str, bytes]):
    """A StateStore in a dict (tests, backtest, bench)."""

    def put(self, partition: int, key: str, value: bytes) -> None:
        self[key] = value

    def delete(self, partition: int, key: str) -> None:
        self.pop(key, None)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A scored review the aggregator refused, for the DLQ."""

    reason: str
    detail: str
    score: ReviewScore


@dataclass(frozen=True, slots=True)
class Forgotten:
    """A product whose state expired at the close of the day before ``window_end``."""

    product_id: str
    window_end: datetime


@dataclass(slots=True)
class StepResult:
    """What one record produced."""

    changes: list[TrendChange] = field(default_factory=list)
    alerts: list[SharpDropAlert] = field(default_factory=list)
    forgotten: list[Forgotten] = field(default_factory=list)
    rejected: Rejected | None = None
    is_duplicate: bool = False
    is_accepted: bool = False


@dataclass(slots=True)
class Aggregator:
    """Applies records of any partition to the window and clock stores."""

    params: DetectorParams
    model_id: str
    allowed_lateness_ms: int
    evidence_k: int
    windows: StateStore
    clocks: StateStore
    expire_after_days: int = 365
    cache_size: int = DEFAULT_CACHE_SIZE
    _products: dict[int, set[str]] = field(default_factory=dict)
    _states: OrderedDict[str, ProductState] = field(default_factory=OrderedDict)
    _clocks: dict[int, PartitionClock] = field(default_factory=dict)
    _dirty: set[str] = field(default_factory=set)
    _expired: dict[str, int] = field(default_factory=dict)
    _dirty_clocks: set[int] = field(default_factory=set)

    def forget_partitions(self) -> None:
        """Drop the index and decoded states: after a rebalance the stores are the truth.

        Call it between batches (after :meth:`flush`): unflushed changes would be lost.
        """
        self._products.clear()
        self._states.clear()
        self._clocks.clear()
        self._dirty.clear()
        self._expired.clear()
        self._dirty_clocks.clear()

    def on_score(self, partition: int, score: ReviewScore) -> StepResult:
        """Apply one scored review, then advance the partition's stream time."""
        clock = self._clock(partition)
        result = StepResult()
        known = self._state(score.product_id)
        if known is not None and known.has(score.review_id):
            # a redelivery (at-least-once, e.g. after a crash) is a duplicate, even when its
            # day has closed since: the first delivery was counted. It still moves stream
            # time as its first delivery did, so days close at the same reviews as in a
            # run without the crash (the clock may have been written before it crashed).
            self._add(partition, score, result, known)
            if result.is_duplicate:
                self._advance(partition, clock, score.ts_ms, result)
            return result
        if not 0 <= day_of(score.ts_ms) <= MAX_DAY:  # a record not from our parser
            result.rejected = Rejected("ts_out_of_range", f"ts {score.ts} is outside the "
                                       "days a state can hold", score)
            return result
        if clock.is_late(score.ts_ms):
            if clock.was_applied(score.source_offset):
                # redelivered after its bucket left the window (a crash long before the
                # next commit): counted the first time, so a duplicate, not late
                result.is_duplicate = True
                return result
            detail = (f"day {score.ts.date()} already closed on partition {partition} "
                      f"(closed through day {clock.closed_through_day})")
            result.rejected = Rejected("late", detail, score)
            return result
        self._add(partition, score, result, known)
        if result.is_accepted:
            clock.applied(score.source_offset)
        self._advance(partition, clock, score.ts_ms, result)
        return result

    def on_tick(self, partition: int, timestamp_ms: int) -> StepResult:
        """Advance the partition's stream time to ``timestamp_ms`` (idle products)."""
        result = StepResult()
        self._advance(partition, self._clock(partition), timestamp_ms, result)
        return result

    def flush(self) -> int:
        """Write every state and clock changed since the last flush, once; return writes."""
        return self.flush_states() + self.flush_clocks()

    def flush_states(self) -> int:
        """Write the changed product states (and expiries); return writes.

        The worker waits for these to be delivered before :meth:`flush_clocks`: a clock
        that is ahead of its products' states would make a redelivered review late.
        """
        writes = 0
        for product_id in self._dirty:
            state = self._states[product_id]
            self.windows.put(state.partition, product_id, state.to_bytes())
            writes += 1
        for product_id, partition in self._expired.items():
            self.windows.delete(partition, product_id)
            writes += 1
        self._dirty.clear()
        self._expired.clear()
        while len(self._states) > self.cache_size:
            self._states.popitem(last=False)
        return writes

    def flush_clocks(self) -> int:
        """Write the changed partition clocks; return writes."""
        for partition in self._dirty_clocks:
            self.clocks.put(partition, str(partition), self._clocks[partition].to_bytes())
        writes = len(self._dirty_clocks)
        self._dirty_clocks.clear()
        return writes

    def _add(self, partition: int, score: ReviewScore, result: StepResult,
             known: ProductState | None) -> None:
        state = known or ProductState(score.product_id, partition)
        text_score = score.score if score.is_text_used else None
        outcome = state.add((score.review_id, score.content_sha256, text_score, score.rating),
                            day_of(score.ts_ms))
        if outcome == "conflict":
            detail = f"review_id {score.review_id!r} was seen before with other content"
            result.rejected = Rejected("duplicate_conflict", detail, score)
        elif outcome == "duplicate":
            result.is_duplicate = True
        else:
            if score.category is not None:  # the latest category wins (seasonal profile)
                state.category = score.category
            self._touch(state)
            self._expired.pop(state.product_id, None)
            self._products_of(partition).add(score.product_id)
            result.is_accepted = True

    def _touch(self, state: ProductState) -> None:
        self._states[state.product_id] = state
        self._states.move_to_end(state.product_id)
        self._dirty.add(state.product_id)

    def _advance(self, partition: int, clock: PartitionClock, ts_ms: int,
                 out: StepResult) -> None:
        """Close the days ``ts_ms`` closes on ``partition``; add what they produce to ``out``."""
        closed = clock.advance(ts_ms, allowed_lateness_ms=self.allowed_lateness_ms)
        if closed is None:
            return
        products = self._products_of(partition)
        for product_id in sorted(products):
            state = self._state(product_id, cache=False)
            if state is None:
                continue
            # evaluation progress alone is not written: re-evaluating a day after a
            # restart finds the same result (closed days take no new reviews)
            before = (state.trend, state.is_alerted, len(state.buckets))
            found = close_through(state, closed, self.params, model_id=self.model_id,
                                  evidence_k=self.evidence_k)
            out.changes += found.changes
            out.alerts += found.alerts
            if not state.buckets and state.last_review_day is not None and \
                    closed - state.last_review_day >= self.expire_after_days:
                products.discard(product_id)
                self._states.pop(product_id, None)
                self._dirty.discard(product_id)
                self._expired[product_id] = partition
                out.forgotten.append(Forgotten(product_id, from_ms(day_start_ms(closed + 1))))
            elif (state.trend, state.is_alerted, len(state.buckets)) != before:
                self._touch(state)
        self._dirty_clocks.add(partition)

    def _state(self, product_id: str, *, cache: bool = True) -> ProductState | None:
        """The product's state: from the cache, else decoded from the store."""
        state = self._states.get(product_id)
        if state is None:
            if product_id in self._expired:
                return None
            raw = self.windows.get(product_id)
            if raw is None:
                return None
            state = ProductState.from_bytes(raw)
            if cache:
                self._states[product_id] = state
        return state

    def _clock(self, partition: int) -> PartitionClock:
        clock = self._clocks.get(partition)
        if clock is None:
            raw = self.clocks.get(str(partition))
            clock = self._clocks[partition] = PartitionClock.from_bytes(raw) if raw \
                else PartitionClock()
        return clock

    def _products_of(self, partition: int) -> set[str]:
        known = self._products.get(partition)
        if known is None:
            known = {key for key, raw in self.windows.items()
                     if partition_of_state(raw) == partition}
            self._products[partition] = known
        return known
