"""Produce a review file into the ``reviews`` topic in event-time order, keyed by product."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from stream.kafkaconf import client_options
from stream.reviewfile import iter_records
from stream.settings import Settings

log = logging.getLogger(__name__)

Record = tuple[bytes | None, bytes | None]  # (key, value)


@dataclass(frozen=True)
class ReplayReport:
    """What a replay produced."""

    produced: int
    reviews: int
    malformed: int
    first_ts: str | None
    last_ts: str | None
    elapsed_s: float


def load_sorted(path: Path, *, since: datetime | None = None,
                until: datetime | None = None) -> list[dict[str, Any]]:
    """Reviews of a file within [since, until), sorted by (ts, review_id)."""
    rows = [obj for _, obj, _ in iter_records(path) if obj is not None]
    if since or until:
        lo = since.strftime("%Y-%m-%dT%H:%M:%SZ") if since else ""
        hi = until.strftime("%Y-%m-%dT%H:%M:%SZ") if until else "\uffff"
        rows = [r for r in rows if lo <= str(r.get("ts", "")) < hi]
    return sorted(rows, key=replay_order)


def replay_order(row: dict[str, Any]) -> tuple[str, str]:
    """The order a replay sends reviews in: (ts, review_id) as written."""
    return str(row.get("ts", "")), str(row.get("review_id", ""))


def malformed_records(template: dict[str, Any], count: int) -> list[Record]:
    """Deliberately bad events, one of each kind in turn (they must reach the DLQ)."""
    pid = str(template["product_id"]).encode()
    good = dict(template, review_id="malformed-demo")
    kinds: list[Record] = [
        (pid, b'{"review_id": "broken", "product_id": '),                      # invalid_json
        (pid, b'\xff\xfe not utf-8 \xc3\x28'),                               # invalid_utf8
        (pid, json.dumps({k: v for k, v in good.items() if k != "text"}).encode()),
        (pid, json.dumps(dict(good, text="   ")).encode()),                  # empty_text
        (pid, json.dumps(dict(good, ts="last tuesday")).encode()),           # bad_timestamp
        (pid, json.dumps(dict(good, rating="five stars")).encode()),         # wrong_type
        (b"not-the-product", json.dumps(good).encode()),                     # key_mismatch
    ]
    return [kinds[i % len(kinds)] for i in range(count)]


def plan(rows: list[dict[str, Any]], *, malformed: int, seed: int) -> list[Record]:
    """Records in order, with the malformed ones spliced in at seeded positions."""
    records: list[Record] = [(str(r.get("product_id", "")).encode() or None,
                              json.dumps(r, ensure_ascii=False).encode()) for r in rows]
    if malformed and rows:
        rng = random.Random(seed)
        for bad in malformed_records(rows[0], malformed):
            records.insert(rng.randrange(len(records) + 1), bad)
    return records


def pacing(rows: list[dict[str, Any]], records: list[Record], speed: float) -> list[float]:
    """Send offset (s) per record: event-time distance from the first review / speed.

    Spliced-in malformed records take the offset of the record before them.
    """
    t0 = datetime.fromisoformat(rows[0]["ts"]).timestamp()
    by_value = {json.dumps(r, ensure_ascii=False).encode():
                (datetime.fromisoformat(r["ts"]).timestamp() - t0) / speed for r in rows}
    offsets, last = [], 0.0
    for _, value in records:
        last = by_value.get(value or b"", last)
        offsets.append(last)
    return offsets


async def produce(settings: Settings, records: list[Record], *, topic: str,
                  pace_s: list[float] | None = None) -> None:
    """Send every record (acks=all, idempotent), optionally paced; flush before returning."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=20,
                                max_request_size=max(1_048_576, settings.max_event_bytes * 2),
                                **client_options(settings))
    await producer.start()
    try:
        started = time.monotonic()
        for i, (key, value) in enumerate(records):
            if pace_s is not None and (wait := pace_s[i] - (time.monotonic() - started)) > 0:
                await asyncio.sleep(wait)
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def replay(settings: Settings, path: Path, *, speed: float | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 malformed: int = 0, seed: int = 7) -> ReplayReport:
    """Replay a file into the reviews topic; ``speed`` = event-time seconds per wall second."""
    rows = load_sorted(path, since=since, until=until)
    records = plan(rows, malformed=malformed, seed=seed)
    pace = pacing(rows, records, speed) if speed and rows else None
    started = time.monotonic()
    await produce(settings, records, topic=settings.topic(settings.topic_reviews), pace_s=pace)
    return ReplayReport(produced=len(records), reviews=len(rows),
                        malformed=len(records) - len(rows),
                        first_ts=rows[0]["ts"] if rows else None,
                        last_ts=rows[-1]["ts"] if rows else None,
                        elapsed_s=round(time.monotonic() - started, 3))
