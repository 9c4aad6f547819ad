"""``trendstream score``: one JSON line of output for every input review."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from stream.errors import EventError
from stream.events import ReviewEvent, parse_review
from stream.inference import Scorer, review_text
from stream.reviewfile import iter_records
from stream.settings import Settings

CHUNK = 256


def _open_out(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return gzip.open(path, "wt", encoding="utf-8") if path.suffix == ".gz" else \
        path.open("w", encoding="utf-8")


def _results(scorer: Scorer, chunk: list[tuple[int, dict[str, Any] | None, str]],
             max_event_bytes: int) -> Iterator[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    parsed: list[tuple[dict[str, Any], ReviewEvent]] = []
    for lineno, obj, line in chunk:
        row = {"review_id": (obj or {}).get("review_id"),
               "product_id": (obj or {}).get("product_id"), "score": None}
        rows.append(row)
        try:
            parsed.append((row, parse_review(line.encode(), key=None,
                                             max_event_bytes=max_event_bytes)))
        except EventError as exc:
            row["reason"] = f"line {lineno}: {exc}"
    if parsed:
        texts = [review_text(r.title, r.text) for _, r in parsed]
        try:
            values: list[float | None] = [float(v) for v in scorer.score(texts).scores]
        except Exception:  # the batch holds a text the scorer fails on: find it
            values = [_score_one(scorer, t) for t in texts]
        for (row, _), value in zip(parsed, values, strict=True):
            if value is None:
                row["reason"] = "unscorable: the model failed on this text"
            else:
                row["score"] = round(value, 6)
    yield from rows


def _score_one(scorer: Scorer, text: str) -> float | None:
    try:
        return float(scorer.score([text]).scores[0])
    except Exception:  # unscorable: reported in the output line, the file goes on
        return None


def score_file(input_path: Path, output_path: Path, *, model_dir: Path,
               settings: Settings) -> dict[str, int]:
    """Score every review of a file; unscorable lines get score null and a reason."""
    scorer = Scorer.from_settings(settings.model_copy(update={"model_dir": model_dir}))
    counts = {"scored": 0, "unscorable": 0}
    chunk: list[tuple[int, dict[str, Any] | None, str]] = []
    with _open_out(output_path) as out:
        def flush() -> None:
            for row in _results(scorer, chunk, settings.max_event_bytes):
                counts["scored" if row["score"] is not None else "unscorable"] += 1
                out.write(json.dumps(row) + "\n")
            chunk.clear()
        for record in iter_records(input_path):
            chunk.append(record)
            if len(chunk) >= CHUNK:
                flush()
        flush()
    return counts
