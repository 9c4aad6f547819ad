"""The scoring stage without Kafka: raw records in, ReviewScores and dead letters out."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from stream.errors import EventError
from stream.events import DeadLetter, ReviewEvent, ReviewScore, dead_letter, parse_review
from stream.inference import MAX_UNK_RATIO, ScoredBatch, review_text

log = logging.getLogger(__name__)


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


def _dead(rec: RawRecord, reason: str, detail: str, max_raw_chars: int,
          review_id: str | None = None) -> DeadLetter:
    return dead_letter(reason=reason, detail=detail, stage="score", topic=rec.topic,
                       partition=rec.partition, offset=rec.offset, key=rec.key, raw=rec.value,
                       max_raw_chars=max_raw_chars, review_id=review_id)


def prepare(records: Sequence[RawRecord], *, max_event_bytes: int, max_raw_chars: int,
            latest_ts: datetime | None = None) -> Prepared:
    """Parse every record; a bad one becomes a dead letter, the rest go on.

    A record that makes the parser fail in a way it does not expect is dead-lettered as
    ``unprocessable`` with the exception: one record must never stop the stream.
    """
    out = Prepared()
    for rec in records:
        try:
            review = parse_review(rec.value, key=rec.key, max_event_bytes=max_event_bytes,
                                  latest_ts=latest_ts)
        except EventError as exc:
            out.dead.append(_dead(rec, exc.reason, exc.detail, max_raw_chars))
            continue
        except Exception as exc:  # any input-triggered failure: DLQ, go on
            log.warning("unprocessable record partition=%d offset=%d: %r", rec.partition,
                        rec.offset, exc)
            out.dead.append(_dead(rec, "unprocessable", f"{type(exc).__name__}: {exc}"[:500],
                                  max_raw_chars))
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


ScoreFn = Callable[[Sequence[str]], ScoredBatch]


def score_prepared(prepared: Prepared, score: ScoreFn, *, model_id: str,
                   max_raw_chars: int) -> tuple[list[ReviewScore], list[DeadLetter]]:
    """Score the parsed reviews; a text the scorer fails on is dead-lettered, not fatal.

    When the batch call fails, each review is scored alone (scores are batch-invariant,
    so nothing changes for the others) and those that still fail become ``unscorable``
    dead letters. If every review fails, the scorer itself is broken: that is raised.
    """
    if not prepared.reviews:
        return [], []
    try:
        return to_scores(prepared, score(prepared.texts), model_id=model_id), []
    except Exception as first:  # find the review that broke the batch
        failure: Exception = first
    kept, batches, dead = Prepared(), [], []
    for (rec, review), text in zip(prepared.reviews, prepared.texts, strict=True):
        try:
            batches.append(score([text]))
        except Exception as exc:
            failure = exc
            dead.append(_dead(rec, "unscorable", f"{type(exc).__name__}: {exc}"[:500],
                              max_raw_chars, review.review_id))
            continue
        kept.reviews.append((rec, review))
    if not kept.reviews:
        raise failure
    merged = ScoredBatch(*(np.concatenate([getattr(b, f) for b in batches])
                           for f in ("scores", "unk_ratio", "n_tokens", "is_truncated")))
    return to_scores(kept, merged, model_id=model_id), dead
