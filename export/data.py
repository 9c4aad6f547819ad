"""Review files in; trend labels and a leak-free temporal split out. Pure numpy, no torch.

Label of a review of product ``p`` at time ``t``: compare ``p``'s review counts in
``(t-H, t]`` and ``(t, t+H]``; 1 ("up") if more after, 0 ("down") if fewer, left out if
equal. Both windows must lie inside the observed span: the look-back may not start before
``p``'s first review, and ``t+H`` may not pass the span's end, which is ``p``'s last review
(``observation_end="product"``, crawled sets) or the last review of the review's source
(``"source"``, live feeds where silence is a fall).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, TextIO

import numpy as np

from export.errors import DataError
from stream.inference import review_text

log = logging.getLogger(__name__)

SECONDS_PER_DAY: Final = 86_400
LEFT_OUT: Final = -1
ObservationEnd = Literal["product", "source"]
_REQUIRED_STR: Final = ("review_id", "product_id", "ts", "text", "source")


@dataclass(frozen=True, slots=True)
class ReviewTable:
    """Reviews as columns, sorted by ``(ts, review_id)``."""

    review_id: np.ndarray  # object (str)
    product_id: np.ndarray  # object (str)
    source: np.ndarray  # object (str)
    ts_s: np.ndarray  # int64, seconds since the epoch, UTC
    text: np.ndarray  # object (str): stream.inference.review_text(title, text)
    rating: np.ndarray  # float64, stars; NaN where the record has none
    category: np.ndarray  # object (str or None)

    def __len__(self) -> int:
        return len(self.ts_s)


@dataclass(frozen=True, slots=True)
class Split:
    """Row indices of each split, in time order, and the cut times between them."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    val_start_s: int
    test_start_s: int


def _open(path: Path) -> TextIO:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


_Row = tuple[str, str, str, int, str, float, str | None]


def _parse(line: str) -> _Row:
    """One JSON line -> (review_id, product_id, source, ts_s, model text, rating, category)."""
    record: Any = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    for key in _REQUIRED_STR:
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise ValueError(f"{key!r} is missing or not a non-empty string")
    if not isinstance(record.get("title"), str | None):
        raise ValueError("'title' is not a string or null")
    ts = datetime.fromisoformat(record["ts"])
    if ts.tzinfo is None:
        raise ValueError(f"ts {record['ts']!r} has no UTC offset")
    rating = record.get("rating")
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, int | float)):
        raise ValueError(f"'rating' {rating!r} is not a number or null")
    category = record.get("category")
    if not isinstance(category, str | None):
        raise ValueError("'category' is not a string or null")
    return (record["review_id"], record["product_id"], record["source"], int(ts.timestamp()),
            review_text(record.get("title"), record["text"]),
            float("nan") if rating is None else float(rating), category or None)


def _records(path: Path) -> Iterator[tuple[int, _Row]]:
    try:
        with _open(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield lineno, _parse(line)
                except ValueError as exc:  # json.JSONDecodeError is a ValueError
                    msg = f"{path}:{lineno}: bad review record ({exc}); fix or delete that line"
                    raise DataError(msg) from exc
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        msg = f"{path}: cannot read it as UTF-8 JSON lines (.jsonl or .jsonl.gz): {exc}"
        raise DataError(msg) from exc


def read_reviews(paths: Sequence[Path]) -> ReviewTable:
    """Read review files (shared format); a bad record raises DataError naming file and line."""
    rows: list[_Row] = []
    seen: dict[str, str] = {}
    for path in map(Path, paths):
        for lineno, row in _records(path):
            if row[0] in seen:
                msg = (f"{path}:{lineno}: review_id {row[0]!r} already read at {seen[row[0]]}; "
                       f"pass each file once")
                raise DataError(msg)
            seen[row[0]] = f"{path}:{lineno}"
            rows.append(row)
    if not rows:
        raise DataError(f"no reviews in {[str(p) for p in paths]}; pass non-empty review files")
    review_id, product_id, source, ts_s, text, rating, category = (
        np.array(c, dtype=object) for c in zip(*rows, strict=True))
    order = np.lexsort((review_id, ts_s.astype(np.int64)))
    return ReviewTable(review_id=review_id[order], product_id=product_id[order],
                       source=source[order], ts_s=ts_s.astype(np.int64)[order], text=text[order],
                       rating=rating.astype(np.float64)[order], category=category[order])


def fingerprint(paths: Sequence[Path]) -> str:
    """sha256 over the files' bytes, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        with Path(path).open("rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _groups(keys: np.ndarray) -> list[np.ndarray]:
    """Row indices of each distinct key."""
    _, inverse = np.unique(keys, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)


def _last_time(keys: np.ndarray, ts_s: np.ndarray) -> np.ndarray:
    """Per row: the latest time among rows with the same key."""
    _, inverse = np.unique(keys, return_inverse=True)
    last = np.full(inverse.max() + 1, np.iinfo(np.int64).min)
    np.maximum.at(last, inverse, ts_s)
    return last[inverse]


def trend_labels(product_id: np.ndarray, ts_s: np.ndarray, source: np.ndarray, *,
                 horizon_days: int = 90, observation_end: ObservationEnd = "product") -> np.ndarray:
    """Per review: 1 (up), 0 (down) or LEFT_OUT (equal counts, or a window outside the span)."""
    labels = np.full(len(ts_s), LEFT_OUT, dtype=np.int8)
    if not len(ts_s):
        return labels
    horizon_s = horizon_days * SECONDS_PER_DAY
    span_end = _last_time(product_id if observation_end == "product" else source, ts_s)
    for rows in _groups(product_id):
        t = ts_s[rows]
        series = np.sort(t)
        upto_t = np.searchsorted(series, t, side="right")
        before = upto_t - np.searchsorted(series, t - horizon_s, side="right")
        after = np.searchsorted(series, t + horizon_s, side="right") - upto_t
        inside = (t - horizon_s >= series[0]) & (t + horizon_s <= span_end[rows])
        keep = inside & (before != after)
        labels[rows[keep]] = after[keep] > before[keep]
    return labels


def _split_sizes(t: np.ndarray, val_start: np.ndarray, test_start: np.ndarray,
                 horizon_s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / val / test sizes for cut times (broadcast); ``t`` sorted ascending."""
    n_train = np.searchsorted(t, val_start - horizon_s, side="right")
    n_val = np.searchsorted(t, test_start - horizon_s, side="right") - \
        np.searchsorted(t, val_start, side="left")
    n_test = len(t) - np.searchsorted(t, test_start, side="left")
    return n_train, np.maximum(n_val, 0), n_test


def _choose_cuts(t: np.ndarray, horizon_s: int,
                 fractions: tuple[float, float, float]) -> tuple[int, int]:
    """The cut pair whose kept split sizes come closest to fractions * n (relative error)."""
    candidates = np.unique(t)
    a, b = candidates[:, None], candidates[None, :]
    sizes = _split_sizes(t, a, b, horizon_s)
    target = np.asarray(fractions) / sum(fractions) * len(t)
    error = sum(((n - want) / want) ** 2 for n, want in zip(sizes, target, strict=True))
    error = error.astype(float)
    error[(b <= a) | (np.minimum(np.minimum(*sizes[:2]), sizes[2]) == 0)] = np.inf
    i, j = np.unravel_index(np.argmin(error), error.shape)
    return int(candidates[i]), int(candidates[j])


def temporal_split(ts_s: np.ndarray, labels: np.ndarray, *, horizon_days: int,
                   fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> Split:
    """Cut the labelled reviews by time with H-wide gaps, so no label sees a later split.

    Every train review has ``t + H <=`` the first val review's ``t``, and the same between
    val and test. The two cut times are the pair whose kept sizes come closest to
    ``fractions`` of all labelled reviews, each split's error relative to its target (gap
    losses count as error): fixed quantile cuts leave an empty validation split when
    reviews bunch up (the holiday peaks of the bundled set).
    """
    rows = np.flatnonzero(labels != LEFT_OUT)
    rows = rows[np.argsort(ts_s[rows], kind="stable")]
    t, horizon_s = ts_s[rows], horizon_days * SECONDS_PER_DAY
    val_start, test_start = _choose_cuts(t, horizon_s, fractions) if len(t) else (0, 0)
    split = Split(train=rows[t + horizon_s <= val_start],
                  val=rows[(t >= val_start) & (t + horizon_s <= test_start)],
                  test=rows[t >= test_start], val_start_s=val_start, test_start_s=test_start)
    if not (len(split.train) and len(split.val) and len(split.test)):
        msg = (f"{len(rows)} labelled reviews cannot be split into non-empty train/val/test "
               f"with {horizon_days}-day gaps; add data covering a longer span or lower "
               f"--horizon-days")
        raise DataError(msg)
    return split


def balanced_sample(product_id: np.ndarray, labels: np.ndarray, *, n: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` row indices spread evenly over (product, label) cells, without replacement.

    Cells are filled round-robin in random order, so small cells give all they have and
    big products cannot dominate; within a product, up and down weigh the same.
    """
    cells = np.array([f"{p}\x1f{y}" for p, y in zip(product_id, labels, strict=True)])
    rank = np.empty(len(cells), dtype=np.int64)
    for rows in _groups(cells):
        rank[rng.permutation(rows)] = np.arange(len(rows))
    return np.sort(np.lexsort((rng.random(len(rank)), rank))[:n])


def label_balance(labels: np.ndarray) -> dict[str, float]:
    """Counts of up / down labels and the up share (LEFT_OUT rows are ignored)."""
    up, down = int((labels == 1).sum()), int((labels == 0).sum())
    return {"n": up + down, "up": up, "down": down, "up_rate": up / max(1, up + down)}
