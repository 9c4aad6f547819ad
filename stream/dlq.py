"""``trendstream dlq``: what the dead-letter topic holds, and re-publishing chosen records.

``redrive`` sends the original record of each chosen dead letter back to its topic (its
partition follows the key, as for any producer), after a fix (a setting, a producer, the
worker, a webhook receiver): a review to the reviews topic, an alert that no webhook
took (stage ``alert``) to trend-alerts, where the delivery agent sends it to every hook
again (same webhook-id). It can only send what the letter kept: the raw value is
truncated to ``DLQ_MAX_RAW_CHARS``, so a letter is redriven only when its kept value
hashes to its ``raw_sha256`` (the whole value is there, byte for byte); others are
counted as ``not_whole``. Letters of the aggregate stage hold the scored review, not
the input: they are counted as ``aggregate_stage`` (re-send the source review instead).
Each redriven record carries the header
``trendstream-redriven-from: <dlq partition>:<dlq offset>``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from stream.benchkafka import read_all
from stream.events import DeadLetter
from stream.kafkaconf import client_options
from stream.settings import Settings


@dataclass(frozen=True)
class Selection:
    """Which dead letters to act on (every given filter must match)."""

    reasons: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    review_ids: frozenset[str] = frozenset()

    def matches(self, letter: DeadLetter) -> bool:
        return ((not self.reasons or letter.reason in self.reasons)
                and (self.since is None or letter.dead_lettered_at >= self.since)
                and (self.until is None or letter.dead_lettered_at < self.until)
                and (not self.review_ids or letter.review_id in self.review_ids))


@dataclass
class RedriveReport:
    selected: int = 0
    redriven: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"selected": self.selected, "redriven": self.redriven,
                "skipped": dict(self.skipped), "dry_run": self.dry_run}


def original(letter: DeadLetter) -> bytes | None:
    """The input record's value when the letter kept all of it (checked by sha256).

    The letter keeps the raw bytes decoded as UTF-8 with backslash escapes for bytes that
    are not; only a value that was valid UTF-8 comes back byte for byte.
    """
    if letter.raw_value is None or letter.raw_sha256 is None:
        return None
    try:
        raw = letter.raw_value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return raw if hashlib.sha256(raw).hexdigest() == letter.raw_sha256 else None


async def dead_letters(settings: Settings) -> list[tuple[int, int, DeadLetter]]:
    """Every dead letter as (partition, offset, letter), read_committed."""
    records = await read_all(settings.kafka_bootstrap, settings.topic(settings.topic_dlq),
                             partitions=settings.partitions, timeout_s=300,
                             client=client_options(settings))
    return [(r.partition, r.offset, DeadLetter.model_validate_json(r.value or b""))
            for r in records]


async def summary(settings: Settings) -> dict[str, Any]:
    """Counts by reason and stage, and how many could be redriven whole."""
    letters = await dead_letters(settings)
    return {"dead_letters": len(letters),
            "by_reason": dict(Counter(d.reason for _, _, d in letters).most_common()),
            "by_stage": dict(Counter(d.stage for _, _, d in letters)),
            "redrivable": sum(1 for _, _, d in letters
                              if d.stage != "aggregate" and original(d) is not None)}


def redrive_topic(settings: Settings, letter: DeadLetter) -> str | None:
    """Where a letter's original record goes back to; None for the aggregate stage."""
    return {"score": settings.topic(settings.topic_reviews),
            "alert": settings.topic(settings.topic_alerts)}.get(letter.stage)


async def redrive(settings: Settings, selection: Selection, *,
                  dry_run: bool = False) -> RedriveReport:
    """Re-publish the chosen dead letters' original records to their topics."""
    report = RedriveReport(dry_run=dry_run)
    chosen = [(p, o, d) for p, o, d in await dead_letters(settings) if selection.matches(d)]
    report.selected = len(chosen)
    sends: list[tuple[str, bytes | None, bytes, bytes]] = []
    for partition, offset, letter in chosen:
        topic = redrive_topic(settings, letter)
        if topic is None:
            report.skipped[f"{letter.stage}_stage"] += 1
            continue
        value = original(letter)
        if value is None:
            report.skipped["not_whole"] += 1
            continue
        key = None if letter.key is None else letter.key.encode("utf-8", "replace")
        sends.append((topic, key, value, f"{partition}:{offset}".encode()))
    if dry_run or not sends:
        report.redriven = 0 if dry_run else len(sends)
        return report
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                enable_idempotence=True,
                                max_request_size=max(1_048_576, settings.max_event_bytes * 2),
                                **client_options(settings))
    await producer.start()
    try:
        for topic, key, value, source in sends:
            await producer.send(topic, value=value, key=key,
                                headers=[("trendstream-redriven-from", source)])
        await producer.flush()
    finally:
        await producer.stop()
    report.redriven = len(sends)
    return report
