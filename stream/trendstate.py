"""Records of the compacted ``trend-state`` topic: the latest trend of every product. Pure.

Key = product_id, on the partition of the product's reviews (like every output). What a
step of the aggregator writes (README, "Current state for late joiners"):

* one :class:`~stream.events.TrendState` per TrendChange, in the order of the changes
  (compaction keeps the last); a product with no record has kept its first trend, stable;
* a tombstone (null value) when the worker forgets a product
  (``state_expire_after_days``), with the header ``trendstream-window-end``: the end of
  the day close that forgot it. It is later than every change of the product's old life
  and earlier than any change of a new one, so a consumer that orders a product's
  records by ``since`` / that header needs no order across topics.

The worker sends them with the step's other outputs, before the product states: after a
crash the restored state would no longer find the change (or the expiry) again, so a
record written after the states could be lost; written before, a replay sends an exact
copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from stream.aggregation import StepResult
from stream.events import TrendState, utc_iso

WINDOW_END_HEADER: Final = "trendstream-window-end"


@dataclass(frozen=True, slots=True)
class StateRecord:
    """One record for ``trend-state``: a TrendState, or a tombstone with its position."""

    product_id: str
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Position:
    """Where a record stands in its product's history: later positions win.

    ``window_end`` grows with every change of a product, and a product is forgotten
    only after its last change (a TrendChange and a TrendState share theirs).
    """

    window_end: str  # ISO-8601 UTC, ...Z: orders as text
    is_forgotten: bool = False

    def key(self) -> tuple[str, bool]:
        return (self.window_end, self.is_forgotten)


def state_records(result: StepResult) -> list[StateRecord]:
    """The trend-state records one aggregation result calls for, in order."""
    records = [StateRecord(c.product_id, TrendState.from_change(c).to_bytes())
               for c in result.changes]
    records += [StateRecord(f.product_id, None, ((WINDOW_END_HEADER, utc_iso(f.window_end)
                                                  .encode()),))
                for f in result.forgotten]
    return records


def position_of(value: bytes | None, headers: list[tuple[str, bytes]] | None,
                ) -> tuple[TrendState | None, Position]:
    """Decode a trend-state record: (its TrendState or None for a tombstone, its position).

    A tombstone without the header (not written by this worker) is placed before every
    change, so it never hides one.
    """
    if value is not None:
        state = TrendState.model_validate_json(value)
        return state, Position(utc_iso(state.since))
    found = dict(headers or ()).get(WINDOW_END_HEADER)
    return None, Position(found.decode() if found else "", is_forgotten=True)


def change_position(window_end: datetime) -> Position:
    """The position of a TrendChange (and of the TrendState it enters)."""
    return Position(utc_iso(window_end))
