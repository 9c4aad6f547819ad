"""The scoring stage without Kafka: raw records in, ReviewScores and dead letters out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from stream.errors import EventError
from stream.events import DeadLetter, ReviewEvent, ReviewScore, dead_letter, parse_review
from stream.inference import MAX_UNK_RATIO, ScoredBatch, review_text


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One consumed record, as Kafka delivered it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class Prepared:
    """A batch split into parsed reviews (with their records) and dead letters."""

    reviews: list[tuple[RawRecord, ReviewEvent]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    unknown_fields: int = 0

    @property
    def texts(self) -> list[str]:
        return [review_text(r.title, r.text) for _, r in self.reviews]


def prepare(records: Sequence[RawRecord], *, max_event_bytes: int,
            max_raw_chars: int) -> Prepared:
    """Parse every record; a bad one becomes a dead letter, the rest go on."""
    out = Prepared()
    for rec in records:
        try:
            review = parse_review(rec.value, key=rec.key, max_event_bytes=max_event_bytes)
        except EventError as exc:
            out.dead.append(dead_letter(reason=exc.reason, detail=exc.detail, stage="score",
                                        topic=rec.topic, partition=rec.partition,
                                        offset=rec.offset, key=rec.key, raw=rec.value,
                                        max_raw_chars=max_raw_chars))
            continue
        out.unknown_fields += review.unknown_fields
        out.reviews.append((rec, review))
    return out


def to_scores(prepared: Prepared, scored: ScoredBatch, *, model_id: str) -> list[ReviewScore]:
    """Pair each parsed review with its score (same order as ``prepared.texts``)."""
    return [
        ReviewScore(
            review_id=review.review_id, product_id=review.product_id, ts=review.ts,
            score=round(float(scored.scores[i]), 6),
            is_text_used=bool(scored.unk_ratio[i] <= MAX_UNK_RATIO),
            unk_ratio=round(float(scored.unk_ratio[i]), 4), n_tokens=int(scored.n_tokens[i]),
            is_truncated=bool(scored.is_truncated[i]), rating=review.rating,
            category=review.category,
            content_sha256=review.content_sha256(), model_id=model_id,
            source_partition=rec.partition, source_offset=rec.offset)
        for i, (rec, review) in enumerate(prepared.reviews)
    ]
