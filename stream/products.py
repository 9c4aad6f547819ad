"""What the ``/products/{product_id}`` page says, and which worker holds a product. Pure.

A product's state lives on the changelog partition of its reviews' input partition
(the aggregator names it explicitly), and producers key reviews by product_id with
Kafka's default partitioner: murmur2 of the key's UTF-8 bytes. So the partition of a
product is :func:`key_partition` of its id. faust's own table routing
(``app.table_route``) hashes the table's *serialized* key instead, and a table with
``key_type=str`` serializes keys as JSON (``"p1"`` with the quotes): it would pick
another partition for most products (tests/unit/test_products.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from aiokafka.partitioner import murmur2

from stream.events import from_ms, utc_iso
from stream.trends import DetectorParams, signals_at, window_bounds
from stream.windows import ProductState, day_start_ms


def key_partition(product_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's and aiokafka's) gives this key."""
    return (murmur2(product_id.encode()) & 0x7FFFFFFF) % partitions


def owner_url(metadata: Mapping[str, Mapping[str, Sequence[int]]], topic: str,
              partition: int) -> str | None:
    """The worker URL whose active partitions of ``topic`` include ``partition``.

    ``metadata`` is faust's assignor view (url -> topic -> partitions), the same that
    ``app.router.table_metadata`` returns.
    """
    for url, topics in metadata.items():
        if partition in topics.get(topic, ()):
            return url
    return None


def _day(day: int | None) -> str | None:
    return None if day is None else date.fromordinal(date(1970, 1, 1).toordinal() + day) \
        .isoformat()


def _iso(day: int | None) -> str | None:
    return None if day is None else utc_iso(from_ms(day_start_ms(day)))


def summary(raw: bytes, *, params: DetectorParams, model_id: str) -> dict[str, Any]:
    """The page's answer for one product, from its compact state record.

    ``signals`` are the detector's inputs at the last closed day (recomputed from the
    reviews the state holds: the same numbers the detector saw); ``since`` and
    ``last_event_id`` name the TrendChange that entered the current state (null while
    the product has kept its first state, stable).
    """
    state = ProductState.from_bytes(raw)
    evaluated = state.evaluated_through_day
    held = sum(len(b) for b in state.buckets.values())
    pending = sum(len(b) for d, b in state.buckets.items()
                  if evaluated is None or d > evaluated)
    bounds = [None, None] if evaluated is None else \
        [utc_iso(t) for t in window_bounds(evaluated, params)]
    signals = None if evaluated is None else signals_at(state, evaluated, params)
    return {
        "product_id": state.product_id, "state": state.trend, "since": _iso(state.since_day),
        "last_event_id": state.last_event_id, "is_alerted": state.is_alerted,
        "category": state.category,
        "window": {
            "window_start": bounds[0], "window_end": bounds[1],
            "reviews_held": held, "days_held": len(state.buckets),
            "first_review_day": _day(min(state.buckets, default=None)),
            "last_review_day": _day(state.last_review_day),
            "reviews_after_window_end": pending,
        },
        "signals": None if signals is None else signals.model_dump(mode="json"),
        "model_id": model_id, "detector_version": params.version,
    }
