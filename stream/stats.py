"""In-process counters of one worker (served at /stats, and at /metrics by stream.metrics)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from stream.aggregation import StepResult
from stream.events import DeadLetter, SharpDropAlert, TrendChange


@dataclass
class Stats:
    """Counts since the process started."""

    consumed: int = 0
    scored: int = 0
    accepted: int = 0
    duplicates_skipped: int = 0
    unknown_fields: int = 0
    batches: int = 0
    score_seconds: float = 0.0
    dead_by_stage: Counter[tuple[str, str]] = field(default_factory=Counter)  # (stage, reason)
    trend_events: Counter[str] = field(default_factory=Counter)
    alerts: int = 0
    in_flight: int = 0  # micro-batches being scored or sent right now

    def on_batch(self, *, consumed: int, scored: int, dead: list[DeadLetter],
                 unknown_fields: int, seconds: float) -> None:
        self.batches += 1
        self.consumed += consumed
        self.scored += scored
        self.unknown_fields += unknown_fields
        self.score_seconds += seconds
        self.on_dead(dead)

    def on_aggregate(self, result: StepResult | None, dead: list[DeadLetter]) -> None:
        if result is not None:
            self.accepted += int(result.is_accepted)
            self.duplicates_skipped += int(result.is_duplicate)
        self.on_dead(dead)

    def on_dead(self, dead: list[DeadLetter]) -> None:
        self.dead_by_stage.update((d.stage, d.reason) for d in dead)

    @property
    def dead_lettered(self) -> Counter[str]:
        """Dead letters by reason, all stages together."""
        by_reason: Counter[str] = Counter()
        for (_, reason), n in self.dead_by_stage.items():
            by_reason[reason] += n
        return by_reason

    def on_trends(self, changes: list[TrendChange], alerts: list[SharpDropAlert]) -> None:
        self.trend_events.update(f"{c.previous_state}->{c.new_state}" for c in changes)
        self.alerts += len(alerts)

    def as_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "scored": self.scored, "accepted": self.accepted,
                "duplicates_skipped": self.duplicates_skipped,
                "unknown_fields": self.unknown_fields, "batches": self.batches,
                "score_seconds": round(self.score_seconds, 3),
                "dead_lettered": dict(self.dead_lettered), "alerts": self.alerts,
                "dead_lettered_total": sum(self.dead_lettered.values()),
                "trend_events": dict(self.trend_events),
                "trend_events_total": sum(self.trend_events.values()),
                "in_flight_batches": self.in_flight}
