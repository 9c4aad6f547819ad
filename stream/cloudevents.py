"""CloudEvents 1.0 headers for output records (Kafka protocol binding, binary mode). Pure.

With ``TRENDSTREAM_CLOUDEVENTS`` on, every record the worker writes to ``review-scores``,
``trends``, ``trend-state`` (tombstones excepted), ``trend-alerts`` and ``reviews-dlq``
carries the event's attributes as headers; the value stays the JSON record (the
CloudEvent's data) and the key stays the product_id (the binding's partition key).
README, "Event contracts":

============== =================================================================
header         value
============== =================================================================
ce_specversion ``1.0``
ce_id          TrendChange: ``event_id``; SharpDropAlert: ``alert_id``;
               TrendState: 32 hex digits of sha256("trend-state", last_event_id);
               ReviewScore: 32 hex digits of sha256(review_id, model_id);
               DeadLetter: 32 hex digits of sha256(topic, partition, offset, reason)
ce_source      ``/trendstream/<app_id>``
ce_type        ``io.trendstream.<what>.v<schema_version>``, e.g.
               ``io.trendstream.trend.changed.v1``
ce_time        the event time, RFC 3339: the review's ``ts``, the window's
               ``window_end``, a TrendState's ``since``, or ``dead_lettered_at``
ce_dataschema  the contract's ``$id``, e.g. ``urn:trendstream:schema:trend-change:v1``
content-type   ``application/json``
============== =================================================================

Each id is what consumers deduplicate on (README, "Processing guarantees"): a record
sent again after a crash carries the same ``ce_id``. A review scored by two models is
two ReviewScore events (two ids); the aggregator counts the first.

The headers are computed from the record's bytes, so they always describe exactly what
was sent (one ``json.loads`` per record, only when the setting is on).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from stream.contracts import ID_PREFIX
from stream.settings import Settings

SPEC_VERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/json"
TYPE_PREFIX: Final = "io.trendstream."

Header = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class Kind:
    """How one contract's records map to CloudEvents attributes."""

    type: str
    event_id: Callable[[dict[str, Any]], str]
    time: Callable[[dict[str, Any]], str]


def digest(*parts: object) -> str:
    """32 hex digits of the sha256 of the parts (joined as events.py joins its ids)."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


KINDS: Final[Mapping[str, Kind]] = {
    "review-score": Kind("review.scored", lambda v: digest(v["review_id"], v["model_id"]),
                         lambda v: v["ts"]),
    "trend-change": Kind("trend.changed", lambda v: v["event_id"], lambda v: v["window_end"]),
    "trend-state": Kind("trend.state", lambda v: digest("trend-state", v["last_event_id"]),
                        lambda v: v["since"]),
    "sharp-drop-alert": Kind("trend.sharp_drop", lambda v: v["alert_id"],
                             lambda v: v["window_end"]),
    "dead-letter": Kind("review.dead_lettered",
                        lambda v: digest(v["topic"], v["partition"], v["offset"], v["reason"]),
                        lambda v: v["dead_lettered_at"]),
}


def source_of(app_id: str) -> str:
    """The ``ce_source`` of a worker group: ``/trendstream/<app_id>``."""
    return f"/trendstream/{quote(app_id, safe='')}"


def headers(contract: str, value: bytes, *, source: str) -> list[Header]:
    """The binary-mode headers of one record of ``contract`` (e.g. ``trend-change``)."""
    kind = KINDS[contract]
    record = json.loads(value)
    version = record["schema_version"]
    attributes = {
        "ce_specversion": SPEC_VERSION,
        "ce_id": kind.event_id(record),
        "ce_source": source,
        "ce_type": f"{TYPE_PREFIX}{kind.type}.v{version}",
        "ce_time": kind.time(record),
        "ce_dataschema": f"{ID_PREFIX}{contract}:v{version}",
        "content-type": CONTENT_TYPE,
    }
    return [(name, text.encode()) for name, text in attributes.items()]


@dataclass(frozen=True, slots=True)
class Binding:
    """The worker's output topics and their contracts, for :meth:`headers`."""

    source: str
    contracts: Mapping[str, str]  # topic name -> contract name

    @classmethod
    def from_settings(cls, settings: Settings) -> Binding:
        topics = {settings.topic_scores: "review-score", settings.topic_trends: "trend-change",
                  settings.topic_trend_state: "trend-state",
                  settings.topic_alerts: "sharp-drop-alert", settings.topic_dlq: "dead-letter"}
        return cls(source=source_of(settings.app_id),
                   contracts={settings.topic(t): c for t, c in topics.items()})

    def headers(self, topic: str, value: bytes | None) -> list[Header] | None:
        """The headers of a record on ``topic``; None for a topic without a contract and
        for a tombstone."""
        contract = self.contracts.get(topic)
        if contract is None or value is None:
            return None
        return headers(contract, value, source=self.source)
